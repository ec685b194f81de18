"""Reptile against hand computations in float64.

The expected side never calls the code under test: a linear model ``y = w x + b`` under the
mean squared error has the gradients ``dL/dw = 2 mean(r x)``, ``dL/db = 2 mean(r)`` with
``r = w x + b - y``, so the inner steps, the outer step ``phi + eps * mean_i(phi_i - phi)``
and Adam are written out by hand below.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

from helpers import interrupted_then_resumed
from metalab.algorithms import ALGORITHMS
from metalab.algorithms.reptile import Reptile, minibatch_indices
from metalab.cli.main import main
from metalab.combiners import build_combiner
from metalab.functional import Adam
from metalab.nn import Conv4
from metalab.tasks import Sinusoid, TaskBatch
from metalab.train import ConfigError, Trainer, load_config
from metalab.train.run import train_run
from metalab.train.trainer import scheduled_lr


# -- hand computations ------------------------------------------------------------------
def hand_gradients(w: float, b: float, x: torch.Tensor, y: torch.Tensor):
    r = w * x + b - y
    return 2.0 * (r * x).mean().item(), 2.0 * r.mean().item()


def hand_sgd(w: float, b: float, x, y, lr: float, steps: int) -> tuple[float, float]:
    for _ in range(steps):
        gw, gb = hand_gradients(w, b, x, y)
        w, b = w - lr * gw, b - lr * gb
    return w, b


def hand_adam(w: float, b: float, x, y, lr: float, steps: int, b1: float, b2: float,
              eps: float = 1e-8) -> tuple[float, float]:
    m, v = [0.0, 0.0], [0.0, 0.0]
    p = [w, b]
    for t in range(1, steps + 1):
        g = hand_gradients(p[0], p[1], x, y)
        for i in range(2):
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            p[i] -= lr * (m[i] / (1 - b1 ** t)) / ((v[i] / (1 - b2 ** t)) ** 0.5 + eps)
    return p[0], p[1]


def hand_reptile_step(w: float, b: float, batch, inner_lr: float, inner_steps: int,
                      eps: float) -> tuple[float, float]:
    """``phi + eps * mean_i(phi_i - phi)``, each ``phi_i`` trained on support + query."""
    moved_w, moved_b = [], []
    for t in range(len(batch)):
        x = torch.cat([batch.support_x[t], batch.query_x[t]]).flatten()
        y = torch.cat([batch.support_y[t], batch.query_y[t]]).flatten()
        wi, bi = hand_sgd(w, b, x, y, inner_lr, inner_steps)
        moved_w.append(wi - w)
        moved_b.append(bi - b)
    return (w + eps * sum(moved_w) / len(moved_w), b + eps * sum(moved_b) / len(moved_b))


def linear_learner(seed: int = 0, **options) -> Reptile:
    torch.manual_seed(seed)
    options = {"inner_optimizer": "sgd", "inner_lr": 0.1, "inner_steps": 3, **options}
    return Reptile(nn.Linear(1, 1).double(), loss="mse", **options)


def weight_and_bias(learner: Reptile) -> tuple[float, float]:
    return learner.model.weight.item(), learner.model.bias.item()


def sinusoids(seed: int = 3, tasks: int = 3) -> Sinusoid:
    return Sinusoid(5, 4, tasks_per_batch=tasks, seed=seed)


def float64_batch(source: Sinusoid):
    return source.sample().to(torch.float64)


def train(learner, steps, tmp_path, **options) -> Trainer:
    trainer = Trainer(learner, sinusoids(), tmp_path, steps=steps, optimizer="sgd",
                      dtype=torch.float64, val_every=0, progress=False, **options)
    trainer.fit()
    return trainer


# -- the outer update ---------------------------------------------------------------------
@pytest.mark.parametrize("task_chunk", [None, 1, 2])
def test_one_meta_iteration_moves_phi_toward_the_mean_of_the_task_weights(tmp_path,
                                                                           task_chunk):
    learner = linear_learner()
    w, b = weight_and_bias(learner)
    expected = hand_reptile_step(w, b, float64_batch(sinusoids()), 0.1, 3, eps=0.7)
    train(learner, 1, tmp_path, lr=0.7, task_chunk=task_chunk)
    assert weight_and_bias(learner) == pytest.approx(expected, abs=1e-12)
    assert (w, b) != pytest.approx(expected, abs=1e-3)  # the step moved phi


def test_the_reptile_gradient_is_phi_minus_the_mean_task_weights():
    learner = linear_learner()
    w, b = weight_and_bias(learner)
    batch = float64_batch(sinusoids())
    hand_w, hand_b = hand_reptile_step(w, b, batch, 0.1, 3, eps=1.0)
    metrics = learner.meta_backward(batch, scale=0.5)  # a process's share of the batch
    assert learner.model.weight.grad.item() == pytest.approx(0.5 * (w - hand_w), abs=1e-12)
    assert learner.model.bias.grad.item() == pytest.approx(0.5 * (b - hand_b), abs=1e-12)
    assert set(metrics) == {"loss", "mse"}


def test_process_shards_add_up_to_the_whole_batch():
    """What torchrun relies on: each process adds its share ``T_r / T`` of the mean, and
    the all-reduce sums them (full-batch inner steps: no RNG in the inner loop)."""
    batch = float64_batch(sinusoids(tasks=5))
    whole, shards = linear_learner(), linear_learner()
    whole.meta_backward(batch)
    shards.meta_backward(batch[:3], scale=3 / 5)
    shards.meta_backward(batch[3:], scale=2 / 5)
    for p, q in zip(whole.parameters(), shards.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-12)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    import os
    import subprocess
    import sys

    from metalab import load_run

    config = {**TINY, "algorithm": {**TINY["algorithm"], "inner_batch": None},
              "train": {**TINY["train"], "steps": 4, "meta_batch": 5, "dtype": "float64"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    single = train_run(load_config(path), tmp_path / "single").learner
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--standalone", "-m", "metalab", "train", str(path), "--out",
               str(tmp_path / "ddp")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    parallel = load_run(tmp_path / "ddp")
    for name, value in single.state_dict().items():
        torch.testing.assert_close(parallel.state_dict()[name], value, rtol=0, atol=1e-10)


@pytest.mark.parametrize("lr, final, expected", [(1.0, 0.0, [1.0, 0.75, 0.5, 0.25]),
                                                 (1.0, 0.2, [1.0, 0.8, 0.6, 0.4])])
def test_the_outer_step_size_anneals_linearly(lr, final, expected):
    from metalab.train.config import TrainConfig

    config = TrainConfig(steps=4, meta_batch=1, lr=lr, lr_final=final, lr_schedule="linear")
    assert [scheduled_lr(config, t) for t in range(4)] == pytest.approx(expected, abs=1e-15)
    constant = TrainConfig(steps=4, meta_batch=1, lr=lr, lr_final=final)
    assert [scheduled_lr(constant, t) for t in range(4)] == [lr] * 4


def test_training_applies_the_annealed_step_sizes(tmp_path):
    learner = linear_learner()
    w, b = weight_and_bias(learner)
    source = sinusoids()
    for eps in (1.0, 0.75, 0.5, 0.25):  # lr 1 annealed to 0 over 4 steps
        w, b = hand_reptile_step(w, b, float64_batch(source), 0.1, 3, eps)
    trainer = train(learner, 4, tmp_path, lr=1.0, lr_schedule="linear")
    assert weight_and_bias(learner) == pytest.approx((w, b), abs=1e-12)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.25)


# -- the inner rule ---------------------------------------------------------------------------
@pytest.mark.parametrize("betas", [(0.0, 0.999), (0.9, 0.99)])
def test_inner_adam_matches_a_hand_written_adam_and_torch(betas):
    learner = linear_learner(inner_optimizer="adam", inner_lr=0.05, inner_betas=list(betas))
    assert isinstance(learner.update_rule, Adam) and learner.update_rule.betas == betas
    w, b = weight_and_bias(learner)
    x = torch.linspace(-2, 3, 7, dtype=torch.float64).unsqueeze(-1)
    y = 1.5 * x - 0.3 + 0.1 * torch.sin(5 * x)
    adapted = learner.train_on(x, y, steps=6)
    expected = hand_adam(w, b, x.flatten(), y.flatten(), 0.05, 6, *betas)
    assert (adapted["weight"].item(), adapted["bias"].item()) == pytest.approx(expected,
                                                                                abs=1e-12)
    peer = nn.Linear(1, 1).double()
    peer.load_state_dict(learner.model.state_dict())
    optimizer = torch.optim.Adam(peer.parameters(), lr=0.05, betas=betas)
    for _ in range(6):
        optimizer.zero_grad()
        nn.functional.mse_loss(peer(x), y).backward()
        optimizer.step()
    torch.testing.assert_close(adapted["weight"], peer.weight.detach(), rtol=0, atol=1e-12)
    assert weight_and_bias(learner) == (w, b)  # the meta-parameters are untouched


def test_inner_minibatches_are_drawn_without_replacement_epoch_after_epoch():
    torch.manual_seed(0)
    order = torch.cat(list(minibatch_indices(5, 2, 5)))
    assert len(order) == 10
    for epoch in (order[:5], order[5:]):
        assert sorted(epoch.tolist()) == [0, 1, 2, 3, 4]
    assert list(minibatch_indices(5, None, 3)) == [slice(None)] * 3
    assert list(minibatch_indices(5, 8, 2)) == [slice(None)] * 2


# -- meta-test ---------------------------------------------------------------------------------
def test_adapt_trains_on_the_support_set_only_for_eval_inner_steps():
    learner = linear_learner(inner_steps=2, eval_inner_steps=5)
    w, b = weight_and_bias(learner)
    task = float64_batch(sinusoids())[0]
    sx, sy = task.support_x, task.support_y
    probe = torch.tensor([[0.5], [-1.0]], dtype=torch.float64)

    def hand_prediction(steps):
        wi, bi = hand_sgd(w, b, sx.flatten(), sy.flatten(), 0.1, steps)
        return (wi * probe + bi).flatten()

    torch.testing.assert_close(learner.adapt(sx, sy)(probe).flatten(), hand_prediction(5),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(learner.adapt(sx, sy, inner_steps=1)(probe).flatten(),
                               hand_prediction(1), rtol=0, atol=1e-12)
    losses, _ = learner.task_losses(float64_batch(sinusoids()), training=False)
    assert losses.shape == (3,)
    with pytest.raises(ValueError, match="does not take the adaptation option"):
        learner.adapt(sx, sy, ways=5)


# -- meta-test, episodes adapted together (strategy="vmap") -------------------------------------
def conv4_episodes(tasks: int = 3, ways: int = 3, shots: int = 2, queries: int = 2):
    """Episodes of 1x16x16 images whose statistics differ from episode to episode (scale and
    offset), so statistics pooled over episodes would move every logit."""
    generator = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)[:tasks].view(tasks, 1, 1, 1, 1)
    offset = torch.arange(tasks, dtype=torch.float64).view(tasks, 1, 1, 1, 1)

    def images(n):
        return torch.randn(tasks, n, 1, 16, 16, generator=generator,
                           dtype=torch.float64) * scale + offset

    def labels(per_class):
        return torch.arange(ways).repeat(per_class).repeat(tasks, 1)

    return TaskBatch(images(ways * shots), labels(shots), images(ways * queries),
                     labels(queries), num_classes=ways)


def conv4_learners(optimizer: str, steps: int = 4) -> tuple[Reptile, Reptile]:
    """A loop and a vmap Reptile sharing one small float64 Conv4 (per-task batch norm)."""
    torch.manual_seed(0)
    model = Conv4(in_channels=1, hidden=4, out_features=3, image_size=16).double()
    options = {"inner_optimizer": optimizer, "inner_lr": 0.01 if optimizer == "adam" else 0.5,
               "inner_betas": (0.0, 0.999), "eval_inner_steps": steps}
    return (Reptile(model, strategy="loop", **options),
            Reptile(model, strategy="vmap", **options))


def loop_logits(learner: Reptile, batch: TaskBatch, **options) -> torch.Tensor:
    return torch.stack([learner.adapt(batch.support_x[t], batch.support_y[t], **options)(
        batch.query_x[t]) for t in range(len(batch))])


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_vmapped_evaluation_gives_every_episode_the_loops_logits(optimizer):
    loop, batched = conv4_learners(optimizer)
    batch = conv4_episodes()
    expected = loop_logits(loop, batch)
    torch.testing.assert_close(batched.batched_outputs(batch), expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(batched.batched_outputs(batch, inner_steps=6),
                               loop_logits(loop, batch, inner_steps=6), rtol=0, atol=1e-10)
    # the evaluator's scores: losses, accuracy, NLL and calibration statistics
    losses, metrics = batched.task_losses(batch, training=False)
    loop_losses, loop_metrics = loop.task_losses(batch, training=False)
    torch.testing.assert_close(losses, loop_losses, rtol=0, atol=1e-10)
    assert sorted(metrics) == sorted(loop_metrics) == ["accuracy", "calibration_bins", "nll"]
    for name in loop_metrics:
        torch.testing.assert_close(metrics[name], loop_metrics[name], rtol=0, atol=1e-10)
    # the inner steps moved the logits well beyond the tolerance
    assert (expected - loop_logits(loop, batch, inner_steps=0)).abs().max() > 1e-2


def test_vmapped_evaluation_of_a_regression_learner_matches_the_loop():
    batch = float64_batch(sinusoids())
    loop, batched = linear_learner(eval_inner_steps=4), linear_learner(eval_inner_steps=4,
                                                                       strategy="vmap")
    losses, metrics = batched.task_losses(batch, training=False)
    loop_losses, loop_metrics = loop.task_losses(batch, training=False)
    torch.testing.assert_close(losses, loop_losses, rtol=0, atol=1e-12)
    assert sorted(metrics) == sorted(loop_metrics) == ["mse"]


def test_training_scores_run_task_by_task_under_either_strategy():
    """``strategy="vmap"`` changes evaluation only: the training-mode scores (the support-set
    inner loop of ``inner_steps``, then the query loss) are the loop's."""
    batch = float64_batch(sinusoids())
    losses, metrics = linear_learner(strategy="vmap").task_losses(batch, training=True)
    loop_losses, loop_metrics = linear_learner().task_losses(batch, training=True)
    torch.testing.assert_close(losses, loop_losses, rtol=0, atol=0)
    torch.testing.assert_close(metrics["mse"], loop_metrics["mse"], rtol=0, atol=0)


def test_the_logit_comparison_detects_pooled_statistics_and_shared_adam_state():
    """What the comparison above would see under two plausible batching bugs, on its data:
    batch norm normalizing every episode with statistics pooled over the batch, and one Adam
    state carried from episode to episode (not fresh per episode)."""
    loop, _ = conv4_learners("adam")
    batch = conv4_episodes()
    expected = loop_logits(loop, batch)
    ways, queries = 3, batch.query_x.shape[1]
    with torch.no_grad():  # pooled: all episodes' queries in one batch-norm batch
        pooled = loop.model(batch.query_x.flatten(0, 1)).view(len(batch), queries, ways)
    assert (pooled - loop_logits(loop, batch, inner_steps=0)).abs().max() > 1e-3
    rule, params = loop.update_rule, {n: p.detach() for n, p in loop.model.named_parameters()}
    state, shared = rule.init(params), []
    for t in range(len(batch)):  # shared: the state is never reset between episodes
        adapted = params
        for _ in range(loop.eval_inner_steps):
            leaves = {n: p.requires_grad_(True) for n, p in
                      ((n, p.detach()) for n, p in adapted.items())}
            loss = loop.loss_fn(loop.predict(leaves, batch.support_x[t]), batch.support_y[t])
            grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())),
                             strict=True))
            with torch.no_grad():
                adapted, state = rule.update(grads, state, leaves)
        with torch.no_grad():
            shared.append(loop.predict(adapted, batch.query_x[t]))
    assert (torch.stack(shared) - expected).abs().max() > 1e-4
    torch.testing.assert_close(shared[0], expected[0], rtol=0, atol=1e-10)  # episode 0 agrees


def test_bad_options_are_errors_naming_them():
    with pytest.raises(ValueError, match="inner_optimizer"):
        linear_learner(inner_optimizer="rmsprop")
    with pytest.raises(ValueError, match="strategy"):
        linear_learner(strategy="pmap")
    with pytest.raises(ValueError, match="inner_steps"):
        linear_learner(strategy="vmap").task_losses(float64_batch(sinusoids()),
                                                    training=False, inner_steps=-1)
    with pytest.raises(ValueError, match="does not take the adaptation option"):
        linear_learner(strategy="vmap").task_losses(float64_batch(sinusoids()),
                                                    training=False, ways=5)
    with pytest.raises(ValueError, match="inner_betas"):
        linear_learner(inner_optimizer="adam", inner_betas=[1.0, 0.9])
    with pytest.raises(ConfigError, match="outer update is not a loss gradient"):
        Trainer(linear_learner(), sinusoids(), "/nonexistent", steps=1,
                combiner=build_combiner("pcgrad"))
    with pytest.raises(ConfigError, match="train.diagnostics: false"):
        Trainer(linear_learner(), sinusoids(), "/nonexistent", steps=1, diagnostics=True)
    assert not ALGORITHMS["reptile"].outer_update_is_loss_gradient
    assert ALGORITHMS["maml"].outer_update_is_loss_gradient


# -- runs ---------------------------------------------------------------------------------------
TINY = {
    "algorithm": {"name": "reptile", "inner_lr": 0.01, "inner_steps": 3, "inner_batch": 4},
    "model": {"name": "mlp", "hidden": [8]},
    "data": {"name": "sinusoid", "shots": 5, "queries": 5},
    "train": {"steps": 10, "meta_batch": 3, "optimizer": "sgd", "lr": 1.0,
              "lr_schedule": "linear", "val_every": 0, "checkpoint_every": 4,
              "log_every": 2, "progress": False},
    "eval": {"episodes": 6, "batch_size": 3},
}


def test_an_interrupted_run_resumes_bit_identically(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(TINY))
    config = load_config(path)
    # after the checkpoint at step 4, before the one at step 8
    straight, resumed = interrupted_then_resumed(config, tmp_path, interrupt_at=7)
    straight = straight.learner
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed.learner.state_dict()[name], value), name
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(1.0 - 9 / 10)


def test_the_shipped_config_trains_and_evaluates_from_the_cli(tmp_path):
    run = tmp_path / "reptile"
    tiny = ["train.steps=2", "train.meta_batch=2", "model.hidden=8", "data.queries=2",
            "algorithm.inner_batch=5", "algorithm.eval_inner_steps=3", "train.val_every=0",
            "train.progress=false", "eval.queries=2"]
    assert main(["train", "reptile-glyphs-5w1s", *tiny, "--out", str(run)]) == 0
    assert main(["eval", str(run), "--episodes", "4"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["metric"] == "accuracy" and 0 <= result["mean"] <= 1
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["lr_schedule"] == "linear" and saved["train"]["optimizer"] == "sgd"
