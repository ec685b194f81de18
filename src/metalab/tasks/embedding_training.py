"""The one training loop of the learned embeddings (autoencoder, ACAI, BiGAN, DeepCluster).

An embedding is fitted once on the unlabelled training images, while the task source is
built, and must be a pure function of those images and its seed (a resumed run rebuilds
the same tasks). Its fit is a sequence of ``steps``: each step draws one minibatch and
every *player* in turn (a loss and the optimizer of its own parameters: one for an
autoencoder, a critic and an autoencoder for ACAI, a discriminator and an
encoder-generator pair for BiGAN) zeroes its gradients, backpropagates its loss on that
minibatch and takes an optimizer step. ``round_steps`` and ``new_round`` let a method
re-derive its targets every few steps (DeepCluster's k-means pseudo-labels).

Why not `metalab.train.Trainer`: that loop meta-trains a learner on a `TaskSource` with one
meta-optimizer, checkpoints and labelled evaluation; an embedding fit is a step of building
that source (it runs inside it, cached per process), needs alternating optimizers, and has
neither tasks nor checkpoints. This module is its single loop, shared by every embedding;
no embedding has a loop of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from metalab.validation import check_positive_int


@dataclass(frozen=True)
class Player:
    """One loss minimised by one optimizer (of that player's parameters only)."""

    name: str
    optimizer: torch.optim.Optimizer
    loss: Callable[[Any], Tensor]


def fit_steps(players: Sequence[Player], draw: Callable[[], Any], steps: int,
              modules: Sequence[nn.Module] = (), round_steps: int | None = None,
              new_round: Callable[[int], None] | None = None) -> list[dict[str, float]]:
    """Run ``steps`` steps (module docstring); returns each step's losses by player name.

    ``modules`` are put in training mode first (batch norm), ``new_round(r)`` is called
    before steps ``r * round_steps``.
    """
    steps = check_positive_int("steps", steps)
    if (round_steps is None) != (new_round is None):
        raise ValueError("give fit_steps both round_steps and new_round, or neither")
    if round_steps is not None:
        round_steps = check_positive_int("round_steps", round_steps)
    for module in modules:
        module.train()
    history = []
    with torch.enable_grad():
        for step in range(steps):
            if new_round is not None and step % round_steps == 0:
                new_round(step // round_steps)
            batch = draw()
            losses = {}
            for player in players:
                player.optimizer.zero_grad(set_to_none=True)
                loss = player.loss(batch)
                loss.backward()
                player.optimizer.step()
                losses[player.name] = float(loss.detach())
            history.append(losses)
    for module in modules:
        module.eval()
    return history


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Torch's global generator set to ``seed`` inside, restored after (parameter inits)."""
    with torch.random.fork_rng():
        torch.manual_seed(int(seed))
        yield


def uniform_batches(x: Tensor, batch_size: int, generator: torch.Generator
                    ) -> Callable[[], Tensor]:
    """Draws of ``batch_size`` rows of ``x``, uniformly with replacement."""
    batch_size = check_positive_int("batch_size", min(batch_size, len(x)))
    return lambda: x[torch.randint(len(x), (batch_size,), generator=generator)]


def frozen_encoder(encoder: nn.Module, chunk: int = 1024) -> Callable[[Tensor], Tensor]:
    """The fitted ``encoder`` as an embedding function (eval mode, no gradients, in chunks
    of ``chunk`` images)."""
    encoder = encoder.eval().requires_grad_(False)

    def embed(images: Tensor) -> Tensor:
        x = images.float()
        return torch.cat([encoder(x[i:i + chunk]) for i in range(0, len(x), chunk)])

    return embed
