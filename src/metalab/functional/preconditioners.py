"""Meta-learned preconditioners of the inner step: Meta-Curvature (Park & Oliva 2019).

Meta-Curvature transforms each gradient tensor by one learned matrix per mode (Park &
Oliva 2019, eq. 5-7). For a convolution's gradient ``G`` of shape ``[C_out, C_in, k, k]``,
seen as a 3-mode tensor ``[C_out, C_in, k*k]``,

    MC(G) = G x_1 M_o x_2 M_i x_3 M_f          (mode-n products; in vectorised form
                                               vec(MC(G)) = (M_o (x) M_i (x) M_f) vec(G))

with ``M_o`` of ``C_out x C_out``, ``M_i`` of ``C_in x C_in`` and ``M_f`` of
``k^2 x k^2``. A linear layer's ``[out, in]`` gradient has two modes, ``MC(G) = M_o G M_i^T``;
a vector (a bias, a batch-norm scale) has one, ``MC(g) = M g`` with a full matrix. The
mode-n product ``(G x_n M)[.., a, ..] = sum_b M[a, b] G[.., b, ..]``.

Every factor starts at the identity, so an untrained Meta-Curvature step is MAML's. The
factors are `nn.Parameter`s of the rule: the outer loop learns them with the model by
differentiating through the inner loop (MC's second-order version; with ``first_order``
the inner gradients are constants but the factors still get the gradient of the step
they shape). The step is ``theta' = theta - alpha * MC(grad)``: chain the rule with
`SGD` (`Chain(MetaCurvature(params), SGD(alpha))`), as `metalab.algorithms.metacurvature`
does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from metalab.functional.update_rules import Params, State, UpdateRule, parameter_key


def mode_sizes(shape: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
    """The modes a tensor of ``shape`` is preconditioned along: ``(n,)`` for a vector,
    ``(out, in)`` for a matrix, ``(out, in, prod(rest))`` for a convolution's kernel."""
    shape = tuple(shape)
    if len(shape) == 0:
        raise ValueError("Meta-Curvature needs tensors with at least one dimension, got a "
                         "scalar parameter")
    if len(shape) <= 2:
        return shape
    return (shape[0], shape[1], math.prod(shape[2:]))


def mode_product(tensor: Tensor, matrix: Tensor, mode: int) -> Tensor:
    """``tensor x_mode matrix``: ``matrix`` applied to the fibres along ``mode``."""
    moved = torch.movedim(tensor, mode, -1)
    return torch.movedim(moved @ matrix.transpose(0, 1), -1, mode)


class KroneckerFactors(nn.Module):
    """One parameter tensor's factors ``M_1 ... M_n``, one square matrix per mode."""

    def __init__(self, shape: torch.Size | tuple[int, ...], like: Tensor) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.factors = nn.ParameterList(
            nn.Parameter(torch.eye(size, dtype=like.dtype, device=like.device))
            for size in mode_sizes(shape))

    def forward(self, grad: Tensor) -> Tensor:
        """``grad x_1 M_1 ... x_n M_n`` in ``grad``'s shape."""
        out = grad.reshape(mode_sizes(self.shape))
        for mode, factor in enumerate(self.factors):
            out = mode_product(out, factor, mode)
        return out.reshape(grad.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, modes={mode_sizes(self.shape)}"


class MetaCurvature(UpdateRule):
    """``d = MC(g)``: a learned Kronecker-factored preconditioner per parameter tensor.

    Args:
        shapes: ``{parameter name: tensor of that parameter's shape}`` for the adapted
            parameters (only the shape, dtype and device are read).
    """

    def __init__(self, shapes: dict[str, Tensor]) -> None:
        super().__init__()
        self.names = list(shapes)
        self.shapes = {n: tuple(p.shape) for n, p in shapes.items()}
        self.curvatures = nn.ModuleDict({
            parameter_key(n): KroneckerFactors(p.shape, p.detach()) for n, p in shapes.items()})

    def check_fits(self, params: Params) -> None:
        """Raise if ``params`` (the adapted parameters) are not the shapes the rule was
        built for, naming the keys that differ."""
        missing = sorted(set(params) - set(self.names))
        wrong = sorted(n for n in set(params) & set(self.names)
                       if tuple(params[n].shape) != self.shapes[n])
        if missing or wrong:
            detail = []
            if missing:
                detail.append(f"no factors for {missing}")
            if wrong:
                detail.append("shape mismatch for " + ", ".join(
                    f"{n} (rule {self.shapes[n]}, model {tuple(params[n].shape)})"
                    for n in wrong))
            raise ValueError(f"the MetaCurvature update rule does not fit the adapted "
                             f"parameters: {'; '.join(detail)}")

    def transform(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        unknown = sorted(set(grads) - set(self.names))
        if unknown:
            raise KeyError(f"MetaCurvature has no factors for {unknown}; it was built for "
                           f"{self.names}")
        return {n: self.curvatures[parameter_key(n)](g) for n, g in grads.items()}, state


__all__ = ["KroneckerFactors", "MetaCurvature", "mode_product", "mode_sizes"]
