"""Meta-gradients, evaluation losses and adapted predictions pinned on fixed seeds.

The values in ``data/pinned_meta_gradients.pt`` were computed by the code as it stood
before the issue-12 refactor (one adaptation contract, update-rule objects). Each case
stores the learner's initial ``state_dict`` and its batch, so the comparison does not
depend on the order in which a constructor draws random numbers; the parameter names of
that state must keep loading (old checkpoints rely on them too).

Regenerate only on purpose: ``python tests/test_pinned_meta_gradients.py --write``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from metalab.algorithms import (
    ANIL,
    ARMBN,
    ARMCML,
    ARMLL,
    ERM,
    MAML,
    MRMAMLA,
    MRMAMLW,
    MetaSGD,
    ProtoNet,
)
from metalab.combiners import build_combiner
from metalab.nn import MLP, BodyHead, Conv4
from metalab.nn.arm import ARMConvNet, ContextNet
from metalab.tasks import TaskBatch

PINNED = Path(__file__).parent / "data" / "pinned_meta_gradients.pt"
RTOL, ATOL = 1e-10, 1e-13
# Parameters renamed by the refactor (the old names still load, see MetaSGD): Meta-SGD's
# rates moved into its update rule.
RENAMED = {"inner_lrs.": "update_rule.rates."}


def _current_name(name: str) -> str:
    for old, new in RENAMED.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name  # float64; machines differ in the last bits of a convolution


def _images(g, tasks, n, size=16, channels=1):
    return torch.randn(tasks, n, channels, size, size, generator=g, dtype=torch.float64)


def _episodes(seed=0, tasks=2, ways=5, shots=1, queries=2) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(ways)
    return TaskBatch(_images(g, tasks, ways * shots), labels.repeat(shots).expand(tasks, -1),
                     _images(g, tasks, ways * queries), labels.repeat(queries).expand(tasks, -1),
                     num_classes=ways)


def _regression(seed=0, tasks=3, shots=5, queries=6) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    amplitude = 0.5 + 4 * torch.rand(tasks, 1, 1, generator=g, dtype=torch.float64)
    phase = 3 * torch.rand(tasks, 1, 1, generator=g, dtype=torch.float64)

    def points(n):
        x = 10 * torch.rand(tasks, n, 1, generator=g, dtype=torch.float64) - 5
        return x, amplitude * torch.sin(x + phase)

    sx, sy = points(shots)
    qx, qy = points(queries)
    return TaskBatch(sx, sy, qx, qy)


def _groups(seed=0, tasks=2, size=6, classes=4, image=12) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    x = _images(g, tasks, size, image)
    y = torch.randint(classes, (tasks, size), generator=g)
    return TaskBatch(x, y, x, y, num_classes=classes, task_id=torch.arange(tasks))


def _conv4(out=5):
    return Conv4(in_channels=1, hidden=8, out_features=out, image_size=16)


def _arm_net(in_channels=1, norm="task"):
    return ARMConvNet(in_channels=in_channels, num_classes=4, hidden=4, fc_hidden=8,
                      kernel_size=3, norm=norm, image_size=12, padding="same")


def _cases():
    """name -> (build learner, build batch, RNG seed before the loss or None)."""
    return {
        "maml-conv4": (lambda: MAML(_conv4(), inner_lr=0.4, inner_steps=2), _episodes, None),
        "fomaml-conv4": (lambda: MAML(_conv4(), inner_lr=0.4, inner_steps=2, first_order=True),
                         _episodes, None),
        "maml-vmap-mlp": (lambda: MAML(MLP(1, (8, 8), 1), inner_lr=0.05, inner_steps=2,
                                       loss="mse", strategy="vmap"), _regression, None),
        "metasgd-mlp": (lambda: MetaSGD(MLP(1, (8, 8), 1), inner_lr=0.05, inner_steps=2,
                                        loss="mse"), _regression, None),
        "anil-conv4": (lambda: ANIL(_conv4(), inner_lr=0.4, inner_steps=2), _episodes, None),
        "protonet-conv4": (lambda: ProtoNet(_conv4(out=None)), _episodes, None),
        "mr-maml-w": (lambda: MRMAMLW(BodyHead(MLP(1, (8,), None), nn.Linear(8, 1)),
                                      beta=0.1, init_log_sigma=-2.0, inner_lr=0.05,
                                      loss="mse"), _regression, 3),
        "mr-maml-a": (lambda: MRMAMLA(BodyHead(MLP(1, (8,), 6), nn.Linear(3, 1)), beta=0.5,
                                      inner_lr=0.05, loss="mse"), _regression, 4),
        "erm": (lambda: ERM(_arm_net(norm="batch")), _groups, None),
        "arm-bn": (lambda: ARMBN(_arm_net()), _groups, None),
        "arm-cml": (lambda: ARMCML(_arm_net(in_channels=1 + 2, norm="batch"),
                                   ContextNet(1, 2, hidden=4, kernel_size=3)), _groups, None),
        "arm-ll": (lambda: ARMLL(_arm_net(), num_classes=4, inner_lr=0.1, inner_steps=2),
                   _groups, None),
    }


def _randomize(learner: nn.Module) -> None:
    """Perturb learned step sizes so that a per-entry rate is not a scalar in disguise."""
    for name, p in learner.named_parameters():
        if "inner_lrs" in name:
            with torch.no_grad():
                p.mul_(1 + 0.5 * torch.rand_like(p))


def _compute(learner, batch, seed):
    grads = {}
    if seed is not None:
        torch.manual_seed(seed)
    learner.zero_grad()
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}
    if seed is not None:
        torch.manual_seed(seed + 100)
    learner.eval()
    eval_losses, eval_metrics = learner.task_losses(batch, training=False)
    if seed is not None:
        torch.manual_seed(seed + 200)
    outputs = learner.adapt(batch.support_x[0], batch.support_y[0])(batch.query_x[0])
    learner.train()
    return {"loss": loss.detach(), "grads": grads, "eval_losses": eval_losses.detach(),
            "eval_metrics": {k: v.detach() for k, v in eval_metrics.items()},
            "adapted_outputs": outputs.detach()}


def _pcgrad_direction(learner, batch):
    """PCGrad on MAML: the combined direction from per-task meta-gradients."""
    losses, _ = learner.task_losses(batch)
    params = [p for p in learner.parameters() if p.requires_grad]
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[t], params,
                                                                  retain_graph=True)])
            for t in range(len(batch))]
    return build_combiner("pcgrad", seed=1).combine(torch.stack(rows), losses.detach())


def compute_all() -> dict:
    pinned = {}
    for name, (make, batch_of, seed) in _cases().items():
        torch.manual_seed(0)
        learner = make().double()
        _randomize(learner)
        batch = batch_of()
        state = {k: v.clone() for k, v in learner.state_dict().items()}
        pinned[name] = {"state": state, "batch": batch, "seed": seed,
                        **_compute(learner, batch, seed)}
    torch.manual_seed(0)
    learner = MAML(_conv4(), inner_lr=0.4, inner_steps=1).double()
    batch = _episodes(seed=5, tasks=3)
    pinned["pcgrad-maml"] = {"state": {k: v.clone() for k, v in learner.state_dict().items()},
                             "batch": batch, "direction": _pcgrad_direction(learner, batch)}
    return pinned


@pytest.fixture(scope="module")
def pinned():
    if not PINNED.is_file():
        pytest.fail(f"{PINNED} is missing; it is committed with the tests")
    return torch.load(PINNED, weights_only=False)


def _close(actual, expected, what):
    assert actual.shape == expected.shape, what
    assert torch.allclose(actual, expected, rtol=RTOL, atol=ATOL), (
        f"{what}: max difference {(actual - expected).abs().max().item():.3e}")


@pytest.mark.parametrize("name", list(_cases()))
def test_meta_gradients_evaluation_and_adaptation_are_pinned(pinned, name):
    make, _, seed = _cases()[name]
    expected = pinned[name]
    torch.manual_seed(0)
    learner = make().double()
    learner.load_state_dict(expected["state"])
    actual = _compute(learner, expected["batch"], seed)
    _close(actual["loss"], expected["loss"], f"{name} meta-loss")
    expected_grads = {_current_name(n): g for n, g in expected["grads"].items()}
    assert set(actual["grads"]) == set(expected_grads), name
    for param, grad in expected_grads.items():
        _close(actual["grads"][param], grad, f"{name} meta-gradient of {param}")
    _close(actual["eval_losses"], expected["eval_losses"], f"{name} evaluation losses")
    # Evaluation scores the learner's metric through adapt(); MR-MAML(A)'s extra "kl" of
    # the query codes is a training term and is no longer reported at meta-test.
    metric = learner.metric_name
    _close(actual["eval_metrics"][metric], expected["eval_metrics"][metric],
           f"{name} evaluation {metric}")
    _close(actual["adapted_outputs"], expected["adapted_outputs"], f"{name} adapt() outputs")


def test_pcgrad_on_maml_direction_is_pinned(pinned):
    expected = pinned["pcgrad-maml"]
    learner = MAML(_conv4(), inner_lr=0.4, inner_steps=1).double()
    learner.load_state_dict(expected["state"])
    _close(_pcgrad_direction(learner, expected["batch"]), expected["direction"],
           "PCGrad direction on MAML")


if __name__ == "__main__" and "--write" in sys.argv:
    PINNED.parent.mkdir(exist_ok=True)
    torch.save(compute_all(), PINNED)
    print(f"wrote {PINNED}")
