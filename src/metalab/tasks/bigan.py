"""BiGAN: bidirectional GAN (Donahue, Krähenbühl & Darrell 2017, "Adversarial Feature
Learning"); its encoder is an embedding for CACTUs.

An encoder ``E`` (pixels -> ``hidden`` -> ``dims``), a generator ``G`` (``dims`` ->
``hidden`` -> pixels, sigmoid output) and a discriminator ``D`` on joint pairs (image and
code concatenated -> ``hidden`` -> 1 logit), all fully connected here. The prior is
``z ~ U[-1, 1]^dims`` (the paper's). The game (paper eq. 3) is

    min_{G,E} max_D  V(D, E, G) = E_x[log D(x, E(x))] + E_z[log(1 - D(G(z), z))],

with ``D(.) = sigmoid(logit)``. The discriminator minimises the cross-entropy of telling
encoder pairs (label 1) from generator pairs (label 0),

    L_D = mean softplus(-D(x, E(x))) + mean softplus(D(G(z), z)),

(``-log sigmoid(l) = softplus(-l)``, ``-log(1 - sigmoid(l)) = softplus(l)``) with ``E(x)``
and ``G(z)`` detached; the encoder and generator minimise the same cross-entropy with the
labels swapped (the paper's non-saturating "inverted labels" objective),

    L_{E,G} = mean softplus(D(x, E(x))) + mean softplus(-D(G(z), z)).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.tasks.embedding_training import (
    Player,
    fit_steps,
    frozen_encoder,
    seeded,
    uniform_batches,
)
from metalab.validation import check_positive_int


class BiganNets(NamedTuple):
    encoder: nn.Module
    generator: nn.Module
    discriminator: nn.Module


def bigan_nets(pixels: int, hidden: int, dims: int) -> BiganNets:
    """Fully connected E, G (sigmoid output) and the joint discriminator on flat images."""
    encoder = nn.Sequential(nn.Linear(pixels, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, dims))
    generator = nn.Sequential(nn.Linear(dims, hidden), nn.ReLU(), nn.Linear(hidden, pixels),
                              nn.Sigmoid())
    discriminator = nn.Sequential(nn.Linear(pixels + dims, hidden), nn.LeakyReLU(0.2),
                                  nn.Linear(hidden, 1))
    return BiganNets(encoder, generator, discriminator)


def joint_logits(nets: BiganNets, x: Tensor, z: Tensor, detach: bool) -> tuple[Tensor, Tensor]:
    """``D(x, E(x))`` and ``D(G(z), z)`` as ``[B]`` logits (``E``, ``G`` detached or not)."""
    code, fake = nets.encoder(x), nets.generator(z)
    if detach:
        code, fake = code.detach(), fake.detach()
    real_logit = nets.discriminator(torch.cat([x, code], 1)).squeeze(1)
    fake_logit = nets.discriminator(torch.cat([fake, z], 1)).squeeze(1)
    return real_logit, fake_logit


def discriminator_loss(real_logit: Tensor, fake_logit: Tensor) -> Tensor:
    """``L_D``: encoder pairs are 1, generator pairs 0."""
    return F.softplus(-real_logit).mean() + F.softplus(fake_logit).mean()


def encoder_generator_loss(real_logit: Tensor, fake_logit: Tensor) -> Tensor:
    """``L_{E,G}``: the same cross-entropy with the labels swapped."""
    return F.softplus(real_logit).mean() + F.softplus(-fake_logit).mean()


def draw_prior(batch: int, dims: int, generator: torch.Generator) -> Tensor:
    """``z ~ U[-1, 1]^dims``."""
    return 2 * torch.rand(batch, dims, generator=generator) - 1


def fit_bigan(images: Tensor, dims: int, seed: int = 0, hidden: int = 512, steps: int = 2000,
              batch_size: int = 128, lr: float = 2e-4, beta1: float = 0.5):
    """The encoder ``E`` of a BiGAN fitted with Adam (``lr``, ``beta1``), the discriminator
    and the encoder-generator pair stepping in turn on each minibatch (`fit_steps`)."""
    x = images.reshape(len(images), -1).float()
    dims, hidden = check_positive_int("dims", dims), check_positive_int("hidden", hidden)
    generator = torch.Generator().manual_seed(int(seed))
    with seeded(seed):
        nets = bigan_nets(x.shape[1], hidden, dims)
    draw_x = uniform_batches(x, batch_size, generator)

    def draw():
        batch = draw_x()
        return batch, draw_prior(len(batch), dims, generator)

    betas = (beta1, 0.999)
    pair = [*nets.encoder.parameters(), *nets.generator.parameters()]
    players = [
        Player("discriminator", torch.optim.Adam(nets.discriminator.parameters(), lr, betas),
               lambda b: discriminator_loss(*joint_logits(nets, *b, detach=True))),
        Player("encoder-generator", torch.optim.Adam(pair, lr, betas),
               lambda b: encoder_generator_loss(*joint_logits(nets, *b, detach=False))),
    ]
    fit_steps(players, draw, steps, modules=nets)
    return frozen_encoder(nn.Sequential(nn.Flatten(), nets.encoder))
