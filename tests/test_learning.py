"""Learning tests: short real meta-trainings that must learn.

Each trains from scratch with the public API (a learner, Adam on `meta_loss`, a task
source) and meta-tests with `Evaluator` on held-out tasks. The thresholds come from a
measured distribution over seeds, not from one run; the numbers are in each test's
comment (measured with /work/main/.venv on the 2-core CPU, `torch.set_num_threads(1)`,
the same code as the test, seeds 0-7 for the sinusoid and 0-5 for Glyphs).
A thread count of one keeps the runs deterministic and the timings stable on shared CPUs.
"""

from __future__ import annotations

import pytest
import torch

from metalab.algorithms import MAML, ProtoNet
from metalab.nn import MLP, Conv4
from metalab.tasks import EpisodeSampler, Sinusoid
from metalab.train.evaluator import Evaluator

pytestmark = pytest.mark.learning


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def meta_train(learner, source, steps: int, lr: float) -> None:
    optimizer = torch.optim.Adam(learner.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        learner.meta_loss(source.sample())[0].backward()
        optimizer.step()


def sinusoid_mse(learner, seed: int) -> float:
    """Mean query MSE over 200 held-out 10-shot sinusoid tasks."""
    source = Sinusoid(10, 10, tasks_per_batch=100, seed=1000 + seed)
    return Evaluator(200).evaluate(learner, source)["mean"]


def train_sinusoid_maml(seed: int, steps: int, inner_lr: float = 0.05):
    torch.manual_seed(seed)
    model = MLP(1, (40, 40), 1)
    torch.manual_seed(seed)
    untrained = MLP(1, (40, 40), 1)  # the same initial weights, never meta-trained
    learner = MAML(model, inner_lr=inner_lr, inner_steps=1, loss="mse", strategy="vmap")
    meta_train(learner, Sinusoid(10, 10, tasks_per_batch=10, seed=seed), steps, lr=1e-3)
    post = sinusoid_mse(learner, seed)
    pre = sinusoid_mse(MAML(model, inner_steps=0, loss="mse"), seed)
    untrained_post = sinusoid_mse(MAML(untrained, inner_lr=inner_lr, inner_steps=1, loss="mse"),
                                  seed)
    return post, pre, untrained_post


@pytest.mark.parametrize("seed", [0])
def test_sinusoid_maml_learns_to_adapt_in_one_step(seed):
    # 1000 meta-steps of 10 tasks, inner_lr 0.05, one inner step (6-15 s alone, up to 27 s
    # on a loaded machine). Measured over seeds 0-7, query MSE after / before adaptation /
    # of the untrained model after adaptation:
    #   1.41/2.98/3.86  1.76/3.20/4.31  1.60/3.03/4.13  2.13/3.38/5.58
    #   1.86/3.10/5.66  1.80/3.37/4.19  1.87/3.13/4.52  1.92/3.38/4.30
    # post/pre: 0.47-0.63 (mean 0.56, sd 0.05); post/untrained: 0.33-0.45 (mean 0.40).
    # Thresholds 0.75 and 0.6: about 4 sd above the mean ratio, and a broken inner loop
    # (a step up the gradient, no adaptation) gives ratios near or above 1.
    post, pre, untrained_post = train_sinusoid_maml(seed, steps=1000)
    assert post < 0.75 * pre, (post, pre)
    assert post < 0.6 * untrained_post, (post, untrained_post)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_sinusoid_maml_longer_training_adapts_much_better(seed):
    # 5000 meta-steps (26-29 s each on a quiet machine, 80-115 s on a loaded one). Seeds
    # 0-3, query MSE after / before adaptation / untrained after adaptation:
    #   0.81/2.90/3.86  0.81/3.10/4.31  0.92/2.98/4.13  1.03/3.23/5.58
    # post/pre 0.26-0.32, post/untrained 0.19-0.22; thresholds 0.5 and 0.4.
    post, pre, untrained_post = train_sinusoid_maml(seed, steps=5000)
    assert post < 0.5 * pre, (post, pre)
    assert post < 0.4 * untrained_post, (post, untrained_post)


@pytest.fixture(scope="module")
def glyphs():
    from metalab.datasets import Glyphs

    return Glyphs("train"), Glyphs("test")


def glyphs_accuracy(learner, test, seed: int) -> float:
    """Mean accuracy over 100 held-out 5-way 1-shot episodes (5 queries per class)."""
    source = EpisodeSampler(test, 5, 1, 5, tasks_per_batch=25, seed=1000 + seed)
    return Evaluator(100).evaluate(learner, source)["mean"]


def train_on_glyphs(learner, train, seed: int, steps: int = 60) -> None:
    meta_train(learner, EpisodeSampler(train, 5, 1, 5, tasks_per_batch=4, seed=seed), steps,
               lr=3e-3)


@pytest.mark.parametrize("seed", [0])
def test_protonet_on_glyphs_is_well_above_chance(glyphs, seed):
    # 60 meta-steps of 4 tasks, Conv4(hidden=16) embedding (~5 s alone). Chance is 0.20.
    # Measured accuracy over seeds 0-5 (100 test episodes each):
    #   0.744 0.696 0.728 0.740 0.720 0.766 (mean 0.73, sd 0.02). Threshold 0.5: 10 sd
    # below the mean, 0.3 above chance.
    train, test = glyphs
    torch.manual_seed(seed)
    learner = ProtoNet(Conv4(hidden=16, out_features=None))
    train_on_glyphs(learner, train, seed)
    assert glyphs_accuracy(learner, test, seed) > 0.5


@pytest.mark.parametrize("seed", [0])
def test_maml_on_glyphs_is_well_above_chance(glyphs, seed):
    # 60 meta-steps of 4 tasks, second-order MAML, Conv4(hidden=16), inner_lr 0.4, one step
    # (~10 s alone). Chance is 0.20. Measured accuracy over seeds 0-5 (100 test episodes):
    #   0.580 0.559 0.513 0.596 0.600 0.571 (mean 0.57, sd 0.03). Threshold 0.4: 5 sd
    # below the mean, twice chance. Without the inner step the labels, permuted per task,
    # cannot be known: chance in expectation (threshold 0.35).
    train, test = glyphs
    torch.manual_seed(seed)
    learner = MAML(Conv4(hidden=16, out_features=5), inner_lr=0.4, inner_steps=1)
    train_on_glyphs(learner, train, seed)
    accuracy = glyphs_accuracy(learner, test, seed)
    assert accuracy > 0.4
    # and the accuracy comes from adaptation: without the inner step it is near chance
    assert glyphs_accuracy(MAML(learner.model, inner_steps=0), test, seed) < 0.35
