"""The memory-augmented network of Santoro et al. (ICML 2016), and its LSTM baseline.

An LSTM controller reads ``[x_t, y_{t-1}, r_{t-1}]`` (the step's features, the offset label
and the previous read) and emits, per step, a key ``k_t`` and a write gate ``alpha_t``.
One read/write head on a memory ``M`` of ``slots x size``:

- least-recently-used access (eqs. 5-8): before writing, the least used slot of the
  previous usage is zeroed, then

      w^lu_{t-1}(i) = 1 if w^u_{t-1}(i) <= m(w^u_{t-1}, n) else 0     (n = 1 read head)
      w^w_t = sigmoid(alpha_t) w^r_{t-1} + (1 - sigmoid(alpha_t)) w^lu_{t-1}
      M_t(i) = M_{t-1}(i) [1 - w^lu_{t-1}(i)] + w^w_t(i) k_t

  with ``m(v, n)`` the n-th smallest entry of v;
- content read by cosine similarity (eqs. 2-4):

      w^r_t(i) = softmax_i( cos(k_t, M_t(i)) ),      r_t = sum_i w^r_t(i) M_t(i)

- optionally (``read_strength``, not in Santoro et al.) a read sharpened by a key strength
  as in the Neural Turing Machine (Graves et al. 2014, eq. 5),
  ``w^r_t(i) = softmax_i( beta_t cos(k_t, M_t(i)) )`` with
  ``beta_t = s (1 + softplus(w_beta . h_t + b_beta))`` emitted by the controller: with
  cosines in [-1, 1] the paper's read over 128 slots is nearly uniform at initialisation;
- usage (eq. 5): ``w^u_t = gamma w^u_{t-1} + w^r_t + w^w_t``;
- output: class logits ``W_o [h_t, r_t] + b`` (the paper's softmax output).

The state starts at zero usage, zero read weights and read vector, and a memory of
``1e-6`` everywhere (cosine similarity needs non-zero rows). The baseline (``memory=False``)
is the same controller on ``[x_t, y_{t-1}]`` with logits ``W_o h_t + b``.

Every function takes any leading batch dimensions, so one call runs many sequences (each
query of an episode from the same support state) at once.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.validation import check_positive_int, check_real

MEMORY_INIT = 1e-6


class MemoryState(NamedTuple):
    """The recurrent state after a step (leading batch dims ``...``)."""

    hidden: Tensor        # [..., H] controller output h_t
    cell: Tensor          # [..., H] controller cell c_t
    memory: Tensor        # [..., slots, size] M_t
    usage: Tensor         # [..., slots] w^u_t
    read_weights: Tensor  # [..., slots] w^r_t
    read: Tensor          # [..., size] r_t


def least_used(usage: Tensor, reads: int = 1) -> Tensor:
    """``w^lu``: 1 at the ``reads`` slots of smallest usage (the first on ties), else 0."""
    indices = usage.topk(reads, dim=-1, largest=False).indices
    return torch.zeros_like(usage).scatter(-1, indices, 1.0)


def lru_write(memory: Tensor, usage: Tensor, last_read_weights: Tensor, gate_logit: Tensor,
              key: Tensor) -> tuple[Tensor, Tensor]:
    """``(M_t, w^w_t)``: zero the least used slot, then add ``w^w_t(i) k_t`` to every slot.

    ``memory [..., N, M]``, ``usage`` and ``last_read_weights [..., N]`` (time t - 1),
    ``gate_logit [...]`` (alpha_t), ``key [..., M]``.
    """
    lu = least_used(usage)
    gate = torch.sigmoid(gate_logit).unsqueeze(-1)
    write_weights = gate * last_read_weights + (1 - gate) * lu
    memory = memory * (1 - lu).unsqueeze(-1) + write_weights.unsqueeze(-1) * key.unsqueeze(-2)
    return memory, write_weights


def cosine_read(memory: Tensor, key: Tensor, eps: float = 1e-8,
                strength: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(w^r_t, r_t)``: softmax over slots of ``beta_t cos(k_t, M_t(i))`` and the weighted
    read; ``strength`` is ``beta_t [...]`` (``None``: 1, Santoro's eq. 2)."""
    cosines = F.cosine_similarity(memory, key.unsqueeze(-2), dim=-1, eps=eps)
    if strength is not None:
        cosines = strength.unsqueeze(-1) * cosines
    weights = torch.softmax(cosines, dim=-1)
    return weights, (weights.unsqueeze(-1) * memory).sum(dim=-2)


def usage_update(usage: Tensor, read_weights: Tensor, write_weights: Tensor,
                 gamma: float) -> Tensor:
    """``w^u_t = gamma w^u_{t-1} + w^r_t + w^w_t``."""
    return gamma * usage + read_weights + write_weights


def lstm_step(cell: nn.LSTMCell, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """One step of ``cell`` (gates i, f, g, o as `torch.nn.LSTMCell`) on any batch dims."""
    gates = x @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class MANNNet(nn.Module):
    """Controller, memory and output layer; ``memory=False`` is the LSTM baseline.

    Args:
        in_features: width of a step's input ``[x_t, y_{t-1}]`` (features + ways).
        ways: classes (output size).
        controller_size: LSTM hidden size (200 in the paper).
        slots, size: memory shape (128 x 40 in the paper).
        gamma: usage decay (0.95 in the paper's code; 0.99 in some re-implementations).
        memory: False for the LSTM baseline.
        read_strength: ``None`` (the paper's read) or ``s > 0``: the read's key strength
            ``beta_t = s (1 + softplus(w_beta . h_t + b_beta))`` (module doc).
    """

    def __init__(self, in_features: int, ways: int, controller_size: int = 200,
                 slots: int = 128, size: int = 40, gamma: float = 0.95,
                 memory: bool = True, read_strength: float | None = None) -> None:
        super().__init__()
        self.has_memory = bool(memory)
        self.slots = check_positive_int("slots", slots)
        self.size = check_positive_int("size", size)
        self.gamma = check_real("gamma", gamma)
        if self.gamma > 1:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
        self.read_strength = None if read_strength is None else check_real(
            "read_strength", read_strength, inclusive=False)
        if self.read_strength is not None and not self.has_memory:
            raise ValueError("read_strength needs the memory (memory=True); the LSTM "
                             "baseline has no read")
        controller_size = check_positive_int("controller_size", controller_size)
        read_width = self.size if self.has_memory else 0
        self.controller = nn.LSTMCell(in_features + read_width, controller_size)
        if self.has_memory:
            self.key = nn.Linear(controller_size, self.size)
            self.gate = nn.Linear(controller_size, 1)
            if self.read_strength is not None:
                self.strength = nn.Linear(controller_size, 1)
        self.output = nn.Linear(controller_size + read_width, check_positive_int("ways", ways))

    def initial_state(self, batch_shape: tuple[int, ...], like: Tensor) -> MemoryState:
        zeros = like.new_zeros
        hidden = self.controller.hidden_size
        return MemoryState(zeros(*batch_shape, hidden), zeros(*batch_shape, hidden),
                           zeros(*batch_shape, self.slots, self.size) + MEMORY_INIT,
                           zeros(*batch_shape, self.slots), zeros(*batch_shape, self.slots),
                           zeros(*batch_shape, self.size))

    def step(self, x: Tensor, state: MemoryState) -> tuple[Tensor, MemoryState]:
        """One step: input ``x [..., in_features]`` to ``(logits [..., ways], new state)``."""
        if not self.has_memory:
            h, c = lstm_step(self.controller, x, state.hidden, state.cell)
            return self.output(h), state._replace(hidden=h, cell=c)
        h, c = lstm_step(self.controller, torch.cat((x, state.read), dim=-1), state.hidden,
                         state.cell)
        key = self.key(h)
        memory, write_weights = lru_write(state.memory, state.usage, state.read_weights,
                                          self.gate(h).squeeze(-1), key)
        read_weights, read = cosine_read(memory, key, strength=self.key_strength(h))
        usage = usage_update(state.usage, read_weights, write_weights, self.gamma)
        logits = self.output(torch.cat((h, read), dim=-1))
        return logits, MemoryState(h, c, memory, usage, read_weights, read)

    def key_strength(self, h: Tensor) -> Tensor | None:
        """``beta_t [...]`` from the controller output, or ``None`` (the paper's read)."""
        if self.read_strength is None:
            return None
        return self.read_strength * (1 + F.softplus(self.strength(h).squeeze(-1)))

    def forward(self, steps: Tensor, state: MemoryState | None = None
                ) -> tuple[Tensor, MemoryState]:
        """``steps [..., T, in_features]`` to ``(logits [..., T, ways], final state)``."""
        if state is None:
            state = self.initial_state(tuple(steps.shape[:-2]), steps)
        outputs = []
        for t in range(steps.shape[-2]):
            logits, state = self.step(steps[..., t, :], state)
            outputs.append(logits)
        return torch.stack(outputs, dim=-2), state
