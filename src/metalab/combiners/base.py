"""The `Combiner` interface: how per-task losses or gradients become one update.

A combiner is one of two kinds, told apart by the class attribute ``needs_gradients``:

- **loss weighting** (``needs_gradients = False``: mean, sum, uncertainty weighting, group
  DRO): ``combine_losses(losses [T], task_ids) -> scalar`` is back-propagated as usual;
- **gradient combination** (``needs_gradients = True``: PCGrad, GradNorm, MGDA, CAGrad):
  ``combine(grads [T, P], losses [T], task_ids) -> direction [P]``, written into ``.grad``
  before ``optimizer.step()``.

Every gradient combiner here returns a linear combination ``w @ grads`` of the task
gradients whose weights ``w`` depend only on the Gram matrix ``grads @ grads.T`` (computed
once per step) and the losses; `GradientCombiner` computes the Gram matrix, asks the
subclass for ``w`` and forms the direction. Directions are on the scale of the MEAN
gradient by default (``reduction="mean"``: with equal weights the direction is
``grads.mean(0)``, so learning rates carry over from plain training); ``reduction="sum"``
multiplies by T, the scale of methods whose paper sums the task gradients (PCGrad).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# check_choice and check_real live in metalab.validation; imported here under their old
# names so ``from metalab.combiners.base import check_choice`` keeps working.
from metalab.validation import check_choice, check_real  # noqa: F401

REDUCTIONS = ("mean", "sum")


def check_losses(losses) -> Tensor:
    """``losses`` must be a non-empty 1-D floating tensor ``[T]``."""
    if not isinstance(losses, Tensor):
        raise TypeError(f"losses must be a torch.Tensor of shape [tasks], "
                        f"got {type(losses).__name__}")
    if losses.dim() != 1 or losses.numel() == 0 or not losses.is_floating_point():
        raise ValueError(f"losses must be a non-empty 1-D floating tensor [tasks], got shape "
                         f"{tuple(losses.shape)} and dtype {losses.dtype}")
    return losses


def check_task_ids(task_ids, tasks: int, bound: int | None = None,
                   bound_name: str = "num_tasks") -> Tensor | None:
    """``task_ids`` must be ``None`` or an integer tensor ``[tasks]`` in ``[0, bound)``.

    The range check costs one device synchronisation (one boolean read).
    """
    if task_ids is None:
        return None
    if not isinstance(task_ids, Tensor):
        raise TypeError(f"task_ids must be a torch.Tensor of shape [{tasks}] or None, "
                        f"got {type(task_ids).__name__}")
    if tuple(task_ids.shape) != (tasks,) or task_ids.is_floating_point() \
            or task_ids.is_complex() or task_ids.dtype == torch.bool:
        raise ValueError(f"task_ids must be an integer tensor of shape [{tasks}] (one id per "
                         f"task), got shape {tuple(task_ids.shape)} and dtype {task_ids.dtype}")
    if bound is not None and bool(((task_ids < 0) | (task_ids >= bound)).any()):
        raise ValueError(f"task_ids must lie in [0, {bound_name}={bound}), got "
                         f"{task_ids.tolist()}")
    return task_ids


def check_gradients(grads, losses: Tensor) -> Tensor:
    """``grads`` must be a floating ``[T, P]`` tensor with one row per loss."""
    if not isinstance(grads, Tensor):
        raise TypeError(f"grads must be a torch.Tensor [tasks, parameters], "
                        f"got {type(grads).__name__}")
    if grads.dim() != 2 or not grads.is_floating_point():
        raise ValueError(f"grads must be a 2-D floating tensor [tasks, parameters] (one "
                         f"flattened gradient per row), got shape {tuple(grads.shape)} and "
                         f"dtype {grads.dtype}")
    if grads.shape[0] != losses.shape[0]:
        raise ValueError(f"grads has {grads.shape[0]} rows but losses has {losses.shape[0]} "
                         f"entries; there must be one gradient row per task loss")
    return grads


class Combiner(nn.Module):
    """Base class of every combiner; see the module docstring for the two kinds."""

    needs_gradients: bool = False

    def __init__(self) -> None:  # no options (and a signature `build_combiner` can check)
        super().__init__()

    @property
    def name(self) -> str:
        return type(self).__name__

    def combine_losses(self, losses: Tensor, task_ids: Tensor | None = None) -> Tensor:
        """``losses [T]`` (attached to the graph) -> one scalar to back-propagate."""
        raise TypeError(f"{self.name} combines per-task gradients (needs_gradients=True): "
                        f"call combine(grads, losses, task_ids), not combine_losses")

    def combine(self, grads: Tensor, losses: Tensor, task_ids: Tensor | None = None) -> Tensor:
        """``grads [T, P]``, ``losses [T]`` (detached) -> update direction ``[P]``."""
        raise TypeError(f"{self.name} weights the per-task losses (needs_gradients=False): "
                        f"call combine_losses(losses, task_ids), not combine")


class GradientCombiner(Combiner):
    """A combiner whose direction is ``w @ grads``, ``w`` computed from the Gram matrix.

    Subclasses implement `combination_weights` on the mean scale (equal weights are
    ``1 / T``); ``reduction="sum"`` multiplies the direction by T.
    """

    needs_gradients = True

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)

    def combination_weights(self, gram: Tensor, losses: Tensor,
                            task_ids: Tensor | None) -> Tensor:
        """``gram [T, T]``, ``losses [T]`` -> weights ``[T]`` (mean scale)."""
        raise NotImplementedError

    def check_task_ids(self, task_ids, tasks: int) -> Tensor | None:
        return check_task_ids(task_ids, tasks)

    def combine(self, grads: Tensor, losses: Tensor, task_ids: Tensor | None = None) -> Tensor:
        losses = check_losses(losses)
        grads = check_gradients(grads, losses)
        task_ids = self.check_task_ids(task_ids, grads.shape[0])
        gram = grads @ grads.T
        weights = self.combination_weights(gram, losses.detach().to(grads), task_ids)
        if self.reduction == "sum":
            weights = weights * grads.shape[0]
        return weights.to(grads) @ grads

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
