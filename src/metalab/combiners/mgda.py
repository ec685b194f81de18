"""MGDA-UB: the min-norm point of the task gradients' convex hull (Sener & Koltun 2018).

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018: the
multiple-gradient descent direction is ``d = sum_t w_t g_t`` with
``w = argmin_{w in simplex} |sum_t w_t g_t|^2`` (their Eq. 3); ``-d`` decreases every task
loss unless the point is Pareto-stationary (``d = 0``). "UB" (upper bound) is the paper's
cheaper variant that applies this to the gradients with respect to the shared
representation; here it is applied to the rows it is given (all parameters, or the shared
ones under ``combine_params="shared"``). The weights come from the Gram matrix only and
are exact (`metalab.combiners.simplex.simplex_qp`; the paper uses Frank-Wolfe).
"""

from __future__ import annotations

from torch import Tensor

from metalab.combiners.base import GradientCombiner
from metalab.combiners.simplex import min_norm_weights


class MGDA(GradientCombiner):
    """Min-norm convex combination of the task gradients.

    The weights sum to 1, so ``reduction="mean"`` returns the min-norm point itself (with
    equal weights it would be the mean gradient); ``"sum"`` multiplies it by T.

    Args:
        reduction: ``"mean"`` or ``"sum"``.
    """

    def combination_weights(self, gram: Tensor, losses: Tensor,
                            task_ids: Tensor | None) -> Tensor:
        return min_norm_weights(gram)
