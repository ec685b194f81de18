"""Adaptation to one task from batches of its inputs that arrive one at a time.

A stream is the adaptation contract applied to everything seen so far: after
``update(x_1) ... update(x_k)`` it predicts as ``learner.adapt(cat(x_1 .. x_k))`` would,
for every method (ARM-BN's statistics and ARM-CML's context of the union, ARM-LL's
steps from the meta-learned parameters on the union). It keeps the inputs it has seen,
so memory grows with them. Labels are never read: this is test-time adaptation from
unlabelled data.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_inputs(name: str, x) -> Tensor:
    """``x`` must be a floating tensor ``[batch, ...]`` with at least one example."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must have shape [batch >= 1, ...] (one group's inputs), "
                         f"got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must hold floating-point inputs, got {x.dtype}")
    return x


class AdaptationStream:
    """``update(x_batch)`` folds a batch in (returns ``self``); ``stream(x)`` predicts.

    ``count`` is the number of examples seen. A learner whose predictions do not depend on
    the support set (``adapts_to_support = False``, e.g. ERM) may predict before any update.
    """

    def __init__(self, learner) -> None:
        self.learner = learner
        self.count = 0
        self.inputs: Tensor | None = None
        self._predictor = None

    def update(self, x_batch: Tensor) -> AdaptationStream:
        check_inputs("x_batch", x_batch)
        x_batch = x_batch.detach()
        if self.inputs is not None and x_batch.shape[1:] != self.inputs.shape[1:]:
            raise ValueError(f"x_batch holds examples of shape {tuple(x_batch.shape[1:])} but "
                             f"the stream's earlier batches had {tuple(self.inputs.shape[1:])}")
        self.inputs = x_batch if self.inputs is None else torch.cat([self.inputs, x_batch])
        self.count += x_batch.shape[0]
        self._predictor = self.learner.adapt(self.inputs)
        return self

    def __call__(self, x: Tensor) -> Tensor:
        check_inputs("x", x)
        if self._predictor is None:
            if self.learner.adapts_to_support:
                raise RuntimeError("the stream has not seen the group yet: call "
                                   "update(x_batch) with at least one batch of its inputs "
                                   "before predicting")
            self._predictor = self.learner.adapt(x)
        return self._predictor(x)
