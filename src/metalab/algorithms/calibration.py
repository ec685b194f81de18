"""Scores of class probabilities: negative log-likelihood and expected calibration error.

For predictions ``p_i`` (a probability vector over classes) with labels ``y_i``, ``i = 1..N``:

- NLL: ``-(1/N) sum_i log p_i[y_i]``;
- ECE (Naeini et al. 2015; Guo et al. 2017, eq. 3) with ``B`` equal-width bins of the
  confidence ``c_i = max_k p_i[k]``: bin ``b`` holds the ``c_i`` in ``((b-1)/B, b/B]`` (bin 1
  also holds ``c_i = 0``), and

      ECE = sum_b (|B_b| / N) |acc(B_b) - conf(B_b)| = (1/N) sum_b |sum_{i in B_b} (a_i - c_i)|

  with ``a_i = [argmax_k p_i[k] = y_i]``.

The ECE is not a mean of per-task values: it pools every prediction. `calibration_bins` gives
one task's additive sufficient statistics ``[B, 3]`` (count, summed confidence, summed
correctness); summing them over tasks and calling `ece_from_bins` gives the pooled ECE, and
`bootstrap_ece` resamples tasks for a confidence interval.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Bins of the expected calibration error (Guo et al. 2017 use 15).
ECE_BINS = 15


def _check_probabilities(probabilities: Tensor, labels: Tensor) -> None:
    if probabilities.dim() != 2 or labels.shape != probabilities.shape[:1]:
        raise ValueError(f"probabilities must be [N, classes] and labels [N], got "
                         f"{tuple(probabilities.shape)} and {tuple(labels.shape)}")


def negative_log_likelihood(probabilities: Tensor, labels: Tensor) -> Tensor:
    """``-(1/N) sum_i log p_i[y_i]`` (module doc)."""
    _check_probabilities(probabilities, labels)
    picked = probabilities.gather(1, labels.long().unsqueeze(1)).squeeze(1)
    # a probability that underflowed to 0 counts as the smallest positive float, not -inf
    return -torch.log(picked.clamp_min(torch.finfo(picked.dtype).tiny)).mean()


def calibration_bins(probabilities: Tensor, labels: Tensor, bins: int = ECE_BINS) -> Tensor:
    """``[bins, 3]``: per confidence bin the count, summed confidence and summed correctness."""
    _check_probabilities(probabilities, labels)
    if bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins}")
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == labels.long()).to(probabilities.dtype)
    # bin b (0-based) holds confidences in (b/B, (b+1)/B]; a confidence of 0 goes to bin 0
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    table = torch.zeros(bins, 3, dtype=probabilities.dtype, device=probabilities.device)
    table[:, 0].index_add_(0, index, torch.ones_like(confidence))
    table[:, 1].index_add_(0, index, confidence)
    table[:, 2].index_add_(0, index, correct)
    return table


def ece_from_bins(table: Tensor) -> Tensor:
    """The ECE of pooled `calibration_bins` ``[bins, 3]`` (or ``[tasks, bins, 3]``, summed)."""
    if table.dim() == 3:
        table = table.sum(dim=0)
    if table.dim() != 2 or table.shape[1] != 3:
        raise ValueError(f"table must be [bins, 3] or [tasks, bins, 3], got {tuple(table.shape)}")
    return (table[:, 2] - table[:, 1]).abs().sum() / table[:, 0].sum()


def expected_calibration_error(probabilities: Tensor, labels: Tensor, bins: int = ECE_BINS
                               ) -> Tensor:
    """The ECE of predictions ``[N, classes]`` with labels ``[N]`` (module doc)."""
    return ece_from_bins(calibration_bins(probabilities, labels, bins))


def pooled_confidence(tables: Tensor) -> float:
    """The mean top-class confidence ``(1/N) sum_i c_i`` of every prediction in per-task
    `calibration_bins` tables ``[tasks, bins, 3]`` (or one ``[bins, 3]``). Minus the pooled
    accuracy it is the signed calibration gap: positive = over-confident."""
    table = tables.reshape(-1, tables.shape[-1])
    return (table[:, 1].sum() / table[:, 0].sum()).item()


def bootstrap_ece(tables: Tensor, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Pooled ECE of per-task tables ``[tasks, bins, 3]`` and the half-width of its 95%
    bootstrap interval over tasks (``(q_97.5 - q_2.5) / 2`` of ``resamples`` resamplings)."""
    if tables.dim() != 3:
        raise ValueError(f"tables must be [tasks, bins, 3], got {tuple(tables.shape)}")
    tables = tables.double()
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(tables), (resamples, len(tables)), generator=generator)
    weights = torch.zeros(resamples, len(tables), dtype=tables.dtype)
    weights.scatter_add_(1, picks, torch.ones_like(weights))  # times each task is drawn
    pooled = (weights @ tables.flatten(start_dim=1)).view(resamples, *tables.shape[1:])
    values = (pooled[..., 2] - pooled[..., 1]).abs().sum(dim=1) / pooled[..., 0].sum(dim=1)
    low, high = torch.quantile(values, torch.tensor([0.025, 0.975], dtype=values.dtype))
    return ece_from_bins(tables).item(), (high - low).item() / 2
