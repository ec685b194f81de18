"""A peer library: MAML's, FOMAML's and ANIL's meta-gradients on Conv4 with batch norm equal
those of `higher` (Grefenstette et al. 2019), in float64.

The peer side is a plain torch Conv4 stepped with ``higher.innerloop_ctx`` and
``torch.optim.SGD``. metalab's batch norm is transductive (`TaskBatchNorm`: the statistics
of the batch being processed, in training and at test, no running statistics), so the peer
model uses ``nn.BatchNorm2d(track_running_stats=False)``, which does the same.

- MAML: ``track_higher_grads=True``; the query loss is back-propagated through the steps.
- FOMAML: ``track_higher_grads=False``; the meta-gradient is the query loss's gradient
  w.r.t. the adapted (fast) weights, the Jacobian of the steps dropped.
- ANIL: the inner loop runs on the head only, on the body's features; the body's gradient
  arrives through the features of the support and query sets (through the query features
  only in the first-order variant).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalab.algorithms import ANIL, MAML
from metalab.nn import Conv4
from metalab.tasks import TaskBatch

try:
    import higher
except Exception as error:  # noqa: BLE001  (any import failure means: no peer to compare with)
    higher = None
    HIGHER_ERROR = f"{type(error).__name__}: {error}"
else:
    HIGHER_ERROR = ""

pytestmark = pytest.mark.skipif(
    higher is None,
    reason=f"the peer library higher==0.2.1 (the 'dev' extra) does not import under torch "
           f"{torch.__version__}: {HIGHER_ERROR}")

WAYS, SHOTS, QUERIES, HIDDEN, SIDE, TASKS = 3, 2, 2, 6, 16, 2


class PlainConv4(nn.Module):
    """Conv4 in plain torch: [conv 3x3, batch norm (batch statistics), max-pool, ReLU] x 4."""

    def __init__(self) -> None:
        super().__init__()
        blocks = []
        for width in (1, HIDDEN, HIDDEN, HIDDEN):
            blocks.append(nn.Sequential(
                nn.Conv2d(width, HIDDEN, 3, padding=1),
                nn.BatchNorm2d(HIDDEN, track_running_stats=False),
                nn.MaxPool2d(2),
                nn.ReLU()))
        self.body = nn.Sequential(*blocks, nn.Flatten())
        self.head = nn.Linear(HIDDEN, WAYS)

    def forward(self, x):
        return self.head(self.body(x))


def models(seed: int = 0) -> tuple[Conv4, PlainConv4]:
    torch.manual_seed(seed)
    ours = Conv4(in_channels=1, hidden=HIDDEN, out_features=WAYS, image_size=SIDE).double()
    with torch.no_grad():  # a non-trivial affine part in every batch norm
        for name, p in ours.named_parameters():
            if p.dim() == 1 and "body" in name:
                p.add_(0.3 * torch.randn_like(p))
    peer = PlainConv4().double()
    # copied by position (conv, batch norm ... head), so Conv4's module names may change
    pairs = list(zip(ours.parameters(), peer.parameters(), strict=True))
    with torch.no_grad():
        for mine, theirs in pairs:
            assert mine.shape == theirs.shape
            theirs.copy_(mine)
    return ours, peer


def peer_names(ours: nn.Module, peer: nn.Module) -> dict[str, str]:
    """metalab parameter name -> the peer's name of the parameter at the same position."""
    return {a: b for (a, _), (b, _) in zip(ours.named_parameters(), peer.named_parameters(),
                                           strict=True)}


def batch(seed: int = 1) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(WAYS)
    return TaskBatch(
        torch.randn(TASKS, WAYS * SHOTS, 1, SIDE, SIDE, generator=g, dtype=torch.float64),
        labels.repeat(SHOTS).expand(TASKS, -1).contiguous(),
        torch.randn(TASKS, WAYS * QUERIES, 1, SIDE, SIDE, generator=g, dtype=torch.float64),
        labels.repeat(QUERIES).expand(TASKS, -1).contiguous(), num_classes=WAYS)


def higher_meta_gradient(peer: nn.Module, tasks: TaskBatch, lr: float, steps: int,
                         first_order: bool, adapted: nn.Module | None = None
                         ) -> dict[str, torch.Tensor]:
    """Mean meta-gradient over the tasks, by name, computed with higher."""
    adapted = peer if adapted is None else adapted
    encode = (lambda x: x) if adapted is peer else peer.body
    peer.zero_grad()
    optimizer = torch.optim.SGD(adapted.parameters(), lr=lr)
    fast_names = [n for n, _ in adapted.named_parameters()]
    first_order_grads: dict[str, torch.Tensor] = {}
    for t in range(len(tasks)):
        with higher.innerloop_ctx(adapted, optimizer, copy_initial_weights=False,
                                  track_higher_grads=not first_order) as (fmodel, diffopt):
            support = encode(tasks.support_x[t])
            for _ in range(steps):
                diffopt.step(F.cross_entropy(fmodel(support), tasks.support_y[t]))
            query_loss = F.cross_entropy(fmodel(encode(tasks.query_x[t])), tasks.query_y[t])
            if first_order:  # the fast weights are constants of the outer pass
                fixed = [] if adapted is peer else list(peer.body.named_parameters())
                grads = torch.autograd.grad(
                    query_loss, list(fmodel.parameters()) + [p for _, p in fixed])
                names = fast_names + ["body." + n for n, _ in fixed]
                for name, g in zip(names, grads, strict=True):
                    first_order_grads[name] = first_order_grads.get(name, 0) + g / len(tasks)
            else:
                (query_loss / len(tasks)).backward()
    result = {n: p.grad.clone() for n, p in peer.named_parameters() if p.grad is not None}
    if first_order:
        prefix = "" if adapted is peer else "head."
        result.update({(n if n.startswith("body.") and adapted is not peer else prefix + n): g
                       for n, g in first_order_grads.items()})
    return result


def metalab_meta_gradient(learner, ours: nn.Module, peer: nn.Module, tasks: TaskBatch
                          ) -> dict[str, torch.Tensor]:
    """The mean meta-gradient, by the peer's parameter names."""
    ours.zero_grad()
    learner.meta_loss(tasks)[0].backward()
    names = peer_names(ours, peer)
    return {names[n]: p.grad.clone() for n, p in ours.named_parameters() if p.grad is not None}


def assert_same_gradients(ours: dict, peer: dict) -> None:
    assert set(ours) == set(peer)
    for name in ours:
        torch.testing.assert_close(ours[name], peer[name], rtol=1e-9, atol=1e-11,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_maml_meta_gradient_equals_highers(steps, strategy):
    ours, peer = models()
    tasks, lr = batch(), 0.3
    learner = MAML(ours, inner_lr=lr, inner_steps=steps, strategy=strategy)
    assert_same_gradients(metalab_meta_gradient(learner, ours, peer, tasks),
                          higher_meta_gradient(peer, tasks, lr, steps, first_order=False))


@pytest.mark.parametrize("steps", [1, 2])
def test_fomaml_meta_gradient_equals_highers_first_order_gradient(steps):
    ours, peer = models(seed=2)
    tasks, lr = batch(seed=3), 0.3
    learner = MAML(ours, inner_lr=lr, inner_steps=steps, first_order=True)
    expected = higher_meta_gradient(peer, tasks, lr, steps, first_order=True)
    assert_same_gradients(metalab_meta_gradient(learner, ours, peer, tasks), expected)
    second_order = higher_meta_gradient(peer, tasks, lr, steps, first_order=False)
    difference = max((expected[n] - second_order[n]).abs().max().item() for n in expected)
    assert difference > 1e-6  # first and second order really differ on this problem


@pytest.mark.parametrize("first_order", [False, True])
def test_anil_meta_gradient_equals_highers_head_only_inner_loop(first_order):
    ours, peer = models(seed=4)
    tasks, lr = batch(seed=5), 0.5
    learner = ANIL(ours, inner_lr=lr, inner_steps=2, first_order=first_order)
    expected = higher_meta_gradient(peer, tasks, lr, 2, first_order=first_order,
                                    adapted=peer.head)
    assert_same_gradients(metalab_meta_gradient(learner, ours, peer, tasks), expected)
    assert any(n.startswith("body.") for n in expected)  # the body is learned in the outer loop
