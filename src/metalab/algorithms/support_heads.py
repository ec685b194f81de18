"""Classifier heads fit on a support set's embeddings at meta-test.

Each head maps support features ``f_i [Ns, D]`` with labels ``y_i`` to class scores for new
features; the fit sees the support set only.

- ``linear`` (Chen et al. 2019, "Baseline"): ``s_k(f) = w_k . f + b_k`` minimising
  ``mean_i CE(s(f_i), y_i) + (weight_decay / 2) ||W||^2``;
- ``cosine`` (Baseline++): ``s_k(f) = scale * cos(f, w_k)``, minimising the mean cross-
  entropy from ``w_k`` = the class means; invariant to the scale of ``f`` and of ``w_k``;
- ``logistic`` (Tian et al. 2020, RFS): multinomial logistic regression on L2-normalised
  features, ``f / ||f||``, with scikit-learn's objective ``1/2 ||W||^2 + C sum_i CE_i``
  (divided by ``C Ns`` here: the same minimiser);
- ``prototypes``: ``s_k(f) = -||f - c_k||^2`` with the class means ``c_k`` (ProtoNet's eq. 2).

The convex fits (and the cosine one) run L-BFGS with a strong-Wolfe line search, in the
features' dtype, from a deterministic start, so a head is a function of the support set.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from metalab.algorithms.protonet import negative_squared_distances, prototypes

HEADS = ("linear", "cosine", "logistic", "prototypes", "finetune")
FittedHead = dict[str, Tensor]


def cosine_logits(features: Tensor, weight: Tensor, scale: float | Tensor) -> Tensor:
    """``scale * cos(f_n, w_k)`` as logits ``[N, K]`` (Baseline++'s classifier)."""
    return scale * F.normalize(features, dim=-1) @ F.normalize(weight, dim=-1).transpose(0, 1)


def minimise(objective: Callable[[], Tensor], params: list[Tensor], steps: int) -> None:
    """Minimise ``objective()`` over ``params`` (leaves, in place) with L-BFGS."""
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)


def fit_linear(features: Tensor, labels: Tensor, ways: int, *, weight_decay: float = 1e-3,
               steps: int = 100) -> FittedHead:
    """Baseline's head: ``W f + b`` by regularised cross-entropy on the support set."""
    features = features.detach()
    weight = features.new_zeros(ways, features.shape[1]).requires_grad_(True)
    bias = features.new_zeros(ways).requires_grad_(True)

    def objective() -> Tensor:
        penalty = 0.5 * weight_decay * (weight ** 2).sum()
        return F.cross_entropy(features @ weight.T + bias, labels) + penalty

    minimise(objective, [weight, bias], steps)
    return {"weight": weight.detach(), "bias": bias.detach()}


def linear_scores(head: FittedHead, features: Tensor) -> Tensor:
    return features @ head["weight"].T + head["bias"]


def fit_cosine(features: Tensor, labels: Tensor, ways: int, *, scale: float = 10.0,
               steps: int = 100) -> FittedHead:
    """Baseline++'s head: class directions ``w_k`` (from the class means) maximising the
    likelihood of ``softmax(scale * cos(f, w))`` on the support set."""
    features = features.detach()
    weight = prototypes(F.normalize(features, dim=-1), labels, ways).clone().requires_grad_(True)

    def objective() -> Tensor:
        return F.cross_entropy(cosine_logits(features, weight, scale), labels)

    minimise(objective, [weight], steps)
    return {"weight": weight.detach(), "scale": torch.as_tensor(scale, dtype=features.dtype)}


def cosine_scores(head: FittedHead, features: Tensor) -> Tensor:
    return cosine_logits(features, head["weight"], head["scale"])


def fit_logistic(features: Tensor, labels: Tensor, ways: int, *, c: float = 1.0,
                 steps: int = 100) -> FittedHead:
    """RFS's head: logistic regression on ``f / ||f||`` with scikit-learn's L2 penalty."""
    normalised = F.normalize(features.detach(), dim=-1)
    weight = normalised.new_zeros(ways, normalised.shape[1]).requires_grad_(True)
    bias = normalised.new_zeros(ways).requires_grad_(True)
    penalty = 1.0 / (2.0 * c * len(labels))

    def objective() -> Tensor:
        logits = normalised @ weight.T + bias
        return F.cross_entropy(logits, labels) + penalty * (weight ** 2).sum()

    minimise(objective, [weight, bias], steps)
    return {"weight": weight.detach(), "bias": bias.detach()}


def logistic_scores(head: FittedHead, features: Tensor) -> Tensor:
    return linear_scores(head, F.normalize(features, dim=-1))


def fit_prototypes(features: Tensor, labels: Tensor, ways: int) -> FittedHead:
    return {"centers": prototypes(features.detach(), labels, ways)}


def prototype_scores(head: FittedHead, features: Tensor) -> Tensor:
    return negative_squared_distances(features, head["centers"])
