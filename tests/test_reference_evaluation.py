"""The evaluator and the evaluation options against hand computations.

- `Evaluator.evaluate`: the mean and the 95% CI ``1.96 * s / sqrt(n)`` (``s`` the sample
  standard deviation, ``n - 1`` in the denominator) of exactly ``episodes`` per-task values,
  computed by the learner in evaluation mode (``training=False`` and ``learner.eval()``),
  the learner's mode restored afterwards.
- `evaluate_run` (and ``metalab eval``): ``inner_steps``, ``episodes``, ``seed`` and
  ``support_size`` checked by their effect: the MSE of the un-adapted / hand-adapted MLP on
  the same tasks, and the support sets the learner actually receives.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from torch.func import functional_call

from metalab.algorithms import ARMBN, MetaLearner
from metalab.cli.main import main
from metalab.tasks import Sinusoid, TaskBatch, TaskSource
from metalab.train.evaluator import Evaluator, mean_ci95
from metalab.train.run import evaluate_run, train_run

VALUES = [0.9, 0.2, 0.55, 0.7, 0.1, 0.35, 0.8, 0.6, 0.05, 0.45, 0.3, 0.95, 0.0, 1.0, 0.15, 0.65]


class IndexedTasks(TaskSource):
    """Batches of ``tasks_per_batch`` tasks; task ``i`` of the stream carries ``i`` in its input."""

    def __init__(self, tasks_per_batch: int) -> None:
        super().__init__(tasks_per_batch, seed=0)
        self.drawn = 0

    def sample(self) -> TaskBatch:
        index = torch.arange(self.drawn, self.drawn + self.tasks_per_batch, dtype=torch.float64)
        self.drawn += self.tasks_per_batch
        x = index.view(-1, 1, 1)
        y = torch.zeros(self.tasks_per_batch, 1, dtype=torch.long)
        return TaskBatch(x, y, x, y, num_classes=2)


class ScriptedLearner(MetaLearner):
    """Returns ``VALUES[i]`` as the accuracy of task ``i`` and records how it was called."""

    def __init__(self) -> None:
        super().__init__("cross_entropy")
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.calls: list[tuple[bool, bool]] = []

    def task_losses(self, batch, training=True):
        self.calls.append((training, self.training))
        index = batch.support_x[:, 0, 0].long()
        values = torch.tensor(VALUES, dtype=torch.float64)[index]
        return 1.0 - values, {"accuracy": values}


def hand_mean_and_ci(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, 1.96 * math.sqrt(variance) / math.sqrt(n)


@pytest.mark.parametrize(("episodes", "per_batch"), [(7, 3), (9, 9), (10, 4)])
def test_evaluator_mean_and_ci_of_exactly_the_requested_episodes(episodes, per_batch):
    learner = ScriptedLearner()
    learner.train()
    result = Evaluator(episodes).evaluate(learner, IndexedTasks(per_batch))
    mean, ci = hand_mean_and_ci(VALUES[:episodes])
    assert result["metric"] == "accuracy" and result["episodes"] == episodes
    assert result["mean"] == pytest.approx(mean, rel=1e-12)
    assert result["ci95"] == pytest.approx(ci, rel=1e-12)
    assert learner.calls and all(call == (False, False) for call in learner.calls)
    assert learner.training  # restored


def test_evaluator_leaves_a_learner_in_eval_mode_in_eval_mode():
    learner = ScriptedLearner().eval()
    Evaluator(3).evaluate(learner, IndexedTasks(2))
    assert not learner.training


def test_mean_ci95_by_hand():
    mean, ci = mean_ci95(torch.tensor(VALUES))
    expected_mean, expected_ci = hand_mean_and_ci(VALUES)
    assert mean == pytest.approx(expected_mean, rel=1e-7)
    assert ci == pytest.approx(expected_ci, rel=1e-6)
    assert mean_ci95(torch.tensor([0.25])) == (0.25, 0.0)


# -- evaluate_run options, by their effect ---------------------------------------------------

SINUSOID_RUN = {
    "algorithm": {"name": "maml", "inner_lr": 0.02, "inner_steps": 1},
    "model": {"name": "mlp", "hidden": [8, 8]},
    "data": {"name": "sinusoid", "shots": 5, "queries": 6},
    "train": {"steps": 3, "meta_batch": 2, "val_every": 0, "checkpoint_every": 3,
              "log_every": 3, "progress": False, "dtype": "float64"},
    "eval": {"episodes": 12, "batch_size": 4},
}


@pytest.fixture(scope="module")
def sinusoid_run(tmp_path_factory):
    from metalab.train import load_config

    directory = tmp_path_factory.mktemp("evaluation")
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(SINUSOID_RUN))
    run = directory / "run"
    trainer = train_run(load_config(path), run)
    return run, trainer.learner


def hand_adapted_mse(model, batch: TaskBatch, lr: float, steps: int) -> list[float]:
    """Query MSE of each task after ``steps`` plain SGD steps on its support MSE."""
    values = []
    for t in range(len(batch)):
        params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
        for _ in range(steps):
            loss = ((functional_call(model, params, (batch.support_x[t],))
                     - batch.support_y[t]) ** 2).mean()
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {n: p - lr * g for (n, p), g in zip(params.items(), grads, strict=True)}
        with torch.no_grad():
            out = functional_call(model, params, (batch.query_x[t],))
            values.append(((out - batch.query_y[t]) ** 2).mean().item())
    return values


def sinusoid_tasks(episodes: int, seed: int) -> TaskBatch:
    """The test tasks of the run: the sinusoid family seeded with the evaluation seed."""
    source = Sinusoid(shots=5, queries=6, tasks_per_batch=4, seed=seed)
    batches = [source.sample().to(torch.float64) for _ in range(-(-episodes // 4))]
    return TaskBatch(*(torch.cat([getattr(b, f) for b in batches])[:episodes]
                       for f in ("support_x", "support_y", "query_x", "query_y")))


@pytest.mark.parametrize("inner_steps", [0, 1, 3])
def test_evaluate_run_inner_steps_and_episodes_change_what_is_computed(sinusoid_run,
                                                                       inner_steps):
    run, learner = sinusoid_run
    result = evaluate_run(run, episodes=10, inner_steps=inner_steps, seed=5)
    tasks = sinusoid_tasks(10, seed=5)
    expected = hand_adapted_mse(learner.model, tasks, 0.02, inner_steps)
    mean, ci = hand_mean_and_ci(expected)
    assert result["episodes"] == 10 and result["inner_steps"] == inner_steps
    assert result["mean"] == pytest.approx(mean, rel=1e-9)
    assert result["ci95"] == pytest.approx(ci, rel=1e-9)


def test_evaluate_run_defaults_to_the_trained_inner_steps_and_config_episodes(sinusoid_run):
    run, learner = sinusoid_run
    result = evaluate_run(run, seed=2)
    expected = hand_adapted_mse(learner.model, sinusoid_tasks(12, seed=2), 0.02, 1)
    assert result["episodes"] == 12
    assert result["mean"] == pytest.approx(sum(expected) / 12, rel=1e-9)
    other_seed = evaluate_run(run, seed=3)
    assert other_seed["mean"] != pytest.approx(result["mean"], rel=1e-6)


def test_cli_eval_options_reach_evaluate_run(sinusoid_run):
    run, _ = sinusoid_run
    assert main(["eval", str(run), "--episodes", "6", "--inner-steps", "0", "--seed", "4"]) == 0
    from_cli = json.loads((run / "eval.json").read_text())
    direct = evaluate_run(run, episodes=6, inner_steps=0, seed=4)
    assert from_cli["episodes"] == 6 and from_cli["inner_steps"] == 0
    assert from_cli["mean"] == pytest.approx(direct["mean"], rel=1e-12)


TINY_ARM = ["model.hidden=4", "model.fc_hidden=8", "data.support_size=6", "train.steps=2",
            "train.val_every=0", "train.log_every=1", "train.progress=false"]


def test_support_size_is_the_support_set_the_learner_receives(tmp_path, monkeypatch):
    run = tmp_path / "arm-bn"
    assert main(["train", "arm-bn-rotated-digits", *TINY_ARM, "--out", str(run)]) == 0
    seen: list[tuple[int, bool]] = []
    original = ARMBN.task_losses

    def spy(self, batch, training=True):
        seen.append((batch.support_x.shape[1], training))
        return original(self, batch, training)

    monkeypatch.setattr(ARMBN, "task_losses", spy)
    for size in (1, 3):
        seen.clear()
        result = evaluate_run(run, episodes=14, support_size=size)
        assert result["support_size"] == size and result["episodes"] == 14
        assert seen and all(s == (size, False) for s in seen)
    seen.clear()
    evaluate_run(run, episodes=14)
    assert seen and all(s == (6, False) for s in seen)  # the config's data.support_size
