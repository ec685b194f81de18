"""An episode as a sequence: the task view of the black-box learners (SNAIL, MANN).

A few-shot episode (support set, query set) becomes an ordered sequence of steps. Each step
shows an example together with a *label channel* of ``ways`` numbers:

- ``labels="null"`` (SNAIL, Mishra et al. 2018): support steps first, each with its own
  label one-hot; then the query steps with a zero ("null") label, the label to predict;
- ``labels="offset"`` (MANN, Santoro et al. 2016): step ``t`` shows ``x_t`` with the label of
  step ``t - 1`` one-hot (step 0 sees zeros), so the network must predict ``y_t`` before it is
  revealed at step ``t + 1``; every step is a prediction.

Which label a class gets is random per episode already (`EpisodeSampler` shuffles labels);
the order of the steps is this module's ``order`` argument (`random_order` draws one), since
the sampler returns the support class by class. The functions are pure: tensors in, tensors
out, no model. `presentation_numbers` counts, for Santoro's per-instance accuracy, how many
times the class of each step has been shown up to and including that step.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from metalab.validation import check_choice, check_positive_int

LABEL_MODES = ("null", "offset")


class EpisodeSequence(NamedTuple):
    """One episode as a sequence of ``n`` steps.

    ``inputs [n, ...]`` the examples in step order, ``label_inputs [n, ways]`` the label
    channel each step sees, ``targets [n]`` the label each step must predict, ``is_query [n]``
    which steps came from the query set.
    """

    inputs: Tensor
    label_inputs: Tensor
    targets: Tensor
    is_query: Tensor


def one_hot_labels(labels: Tensor, ways: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[..., ways]`` one-hot rows of integer ``labels`` in ``[0, ways)``."""
    ways = check_positive_int("ways", ways)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= ways):
        raise ValueError(f"labels must lie in [0, ways={ways}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return (labels.unsqueeze(-1) == torch.arange(ways, device=labels.device)).to(dtype)


def offset_label_inputs(labels: Tensor, ways: int, dtype: torch.dtype = torch.float32
                        ) -> Tensor:
    """Santoro's offset labels ``[n, ..., ways]``: row ``t`` is ``onehot(labels[t - 1])``,
    row 0 zeros (steps along the first dimension of ``labels [n, ...]``)."""
    one_hot = one_hot_labels(labels, ways, dtype)
    return torch.cat((torch.zeros_like(one_hot[:1]), one_hot[:-1]), dim=0)


def random_order(length: int, device: torch.device | str = "cpu",
                 generator: torch.Generator | None = None) -> Tensor:
    """A random permutation of ``range(length)`` on ``device`` (the order of an episode's
    steps), drawn from the CPU generator so that it is the same on every device."""
    return torch.randperm(length, generator=generator, device="cpu").to(device)


def episode_as_sequence(support_x: Tensor, support_y: Tensor, query_x: Tensor,
                        query_y: Tensor, ways: int, labels: str = "null",
                        order: Tensor | None = None) -> EpisodeSequence:
    """The steps of one episode: the support set, then the query set.

    Args:
        support_x, support_y, query_x, query_y: one task (no task dimension).
        ways: the number of classes (the label channel's width).
        labels: ``"null"``, support steps see their own label and query steps zeros
            (SNAIL); ``"offset"``, step ``t`` sees the label of step ``t - 1`` (MANN).
        order: a permutation of the ``Ns + Nq`` steps (support indices first, then query
            indices) applied before the label channel is formed; ``None`` keeps support then
            queries. With ``"null"`` labels the order may mix support and query steps.
    """
    check_choice("labels", labels, LABEL_MODES)
    inputs = torch.cat((support_x, query_x), dim=0)
    targets = torch.cat((support_y, query_y), dim=0)
    is_query = torch.cat((torch.zeros(len(support_y), dtype=torch.bool, device=targets.device),
                          torch.ones(len(query_y), dtype=torch.bool, device=targets.device)))
    if order is not None:
        if sorted(order.tolist()) != list(range(len(targets))):
            raise ValueError(f"order must be a permutation of range({len(targets)}), got "
                             f"{order.tolist()}")
        inputs, targets, is_query = inputs[order], targets[order], is_query[order]
    dtype = inputs.dtype if inputs.is_floating_point() else torch.float32
    if labels == "offset":
        label_inputs = offset_label_inputs(targets, ways, dtype)
    else:
        label_inputs = one_hot_labels(targets, ways, dtype) * (~is_query).unsqueeze(-1)
    return EpisodeSequence(inputs, label_inputs, targets, is_query)


def with_label_channel(features: Tensor, label_inputs: Tensor) -> Tensor:
    """``[n, D + ways]``: each step's feature vector followed by its label channel."""
    if features.shape[:-1] != label_inputs.shape[:-1]:
        raise ValueError(f"features {tuple(features.shape)} and label_inputs "
                         f"{tuple(label_inputs.shape)} must agree on all but the last dim")
    return torch.cat((features, label_inputs), dim=-1)


def queries_after_support(support_steps: Tensor, query_steps: Tensor) -> Tensor:
    """``[Nq, Ns + 1, C]``: one sequence per query, the support steps then that query.

    SNAIL's evaluation (Mishra et al. 2018): each query is classified from the support set
    alone, never from the other queries.
    """
    support = support_steps.unsqueeze(0).expand(query_steps.shape[0], *support_steps.shape)
    return torch.cat((support, query_steps.unsqueeze(1)), dim=1)


def presentation_numbers(targets: Tensor) -> Tensor:
    """``[n]``: step ``t`` shows its class for the ``k``-th time (1-based) within the sequence.

    Santoro et al. (2016) report accuracy per instance number: the 1st presentation of a
    class is a guess, the 2nd is the first chance to use memory.
    """
    same = targets.unsqueeze(0) == targets.unsqueeze(1)  # [t, s]: y_s == y_t
    earlier_or_same = torch.ones_like(same).tril()
    return (same & earlier_or_same).sum(dim=1)


def accuracy_by_presentation(correct: Tensor, presentations: Tensor, numbers: list[int]
                             ) -> Tensor:
    """``[E, len(numbers)]``: per episode, the accuracy over the steps that show their class
    for the k-th time, for each k of ``numbers`` (NaN where an episode has no such step).

    ``correct [E, n]`` (booleans or 0/1) and ``presentations [E, n]`` (`presentation_numbers`
    of each episode).
    """
    columns = []
    for k in numbers:
        chosen = (presentations == k).to(torch.float64)
        hits = (correct.to(torch.float64) * chosen).sum(dim=1)
        columns.append(hits / chosen.sum(dim=1))  # 0 / 0 = NaN: no k-th presentation
    return torch.stack(columns, dim=1)
