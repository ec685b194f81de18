"""ACAI: adversarially constrained autoencoder interpolation (Berthelot, Raffel, Roy &
Goodfellow 2019, "Understanding and Improving Interpolation in Autoencoders via an
Adversarial Regularizer"), the embedding CACTUs found best on Omniglot.

An encoder ``f`` and decoder ``g`` (fully connected here: pixels -> ``hidden`` -> ``dims``
and back, leaky ReLU of slope 0.2 as the authors' nets, tanh output) and a critic ``d``
(pixels -> ``critic_hidden`` -> 1), on pixels
scaled to ``[-1, 1]`` as the paper's data (``2 x - 1`` of images in ``[0, 1]``: the losses'
balance at ``lambda = 0.5`` depends on that scale; on ``[0, 1]`` pixels the reconstruction
error is 4 times smaller and the critic term dominated: after 400 steps on glyphs the
codes' 1-NN 5-way 1-shot test accuracy was 32% on ``[0, 1]`` pixels, 55% on ``[-1, 1]``,
over 100 test episodes, ``/tmp`` diagnostic, not a benchmark). For a
minibatch ``x`` paired with itself reversed (``x2 = x.flip(0)``, as the authors' code) and
``alpha ~ U[0, 0.5]`` per pair, the decoded interpolation is

    x_hat_alpha = g(alpha f(x) + (1 - alpha) f(x2)).

The critic predicts ``alpha`` from ``x_hat_alpha`` and 0 from a blend of real data and
reconstruction (paper eq. 2, ``gamma = 0.2``):

    L_d = || d(x_hat_alpha) - alpha ||^2 + || d(gamma x + (1 - gamma) g(f(x))) ||^2,

and the autoencoder minimises reconstruction plus fooling the critic into 0 (eq. 1,
``lambda = 0.5``):

    L_{f,g} = || x - g(f(x)) ||^2 + lambda || d(x_hat_alpha) ||^2.

Why leaky ReLU (``activation``, default ``leaky_relu``; ``relu`` is the earlier version):
on the Omniglot subsets' 2 200 images (92% background, so every signed image shares a
large -1 component) the ReLU encoder's hidden units were pushed negative for every image
within the first 50 Adam steps (91% of them with seed 0), the decoder output the mean image
(reconstruction error 0.29, the signed pixels' variance), and by step 1000 all 512 units
were off for every image: constant codes, chance accuracy for every classifier on them.
A ReLU unit that is off for every input gets no gradient and cannot recover; with leaky
ReLU the same seed left the mean-image plateau by step 400 and reached reconstruction error
0.070 at step 1000 (``docs/unsupervised-meta-learning.md``).

The squared norms are means over the minibatch (and over pixels for the reconstruction),
as in the authors' code; the critic's inputs are detached from the autoencoder in ``L_d``,
and only the autoencoder's parameters step on ``L_{f,g}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from metalab.tasks.embedding_training import (
    Player,
    fit_steps,
    frozen_encoder,
    seeded,
    uniform_batches,
)
from metalab.validation import check_positive_int


class AcaiNets(NamedTuple):
    encoder: nn.Module
    decoder: nn.Module
    critic: nn.Module


ACTIVATIONS = {"leaky_relu": lambda: nn.LeakyReLU(0.2), "relu": nn.ReLU}


def acai_nets(pixels: int, hidden: int, dims: int, critic_hidden: int,
              activation: str = "leaky_relu") -> AcaiNets:
    """Fully connected encoder, decoder (tanh output) and critic on flat images; the
    encoder's and decoder's hidden ``activation`` is one of `ACTIVATIONS`."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    act = ACTIVATIONS[activation]
    encoder = nn.Sequential(nn.Linear(pixels, hidden), act(), nn.Linear(hidden, dims))
    decoder = nn.Sequential(nn.Linear(dims, hidden), act(), nn.Linear(hidden, pixels),
                            nn.Tanh())
    critic = nn.Sequential(nn.Linear(pixels, critic_hidden), nn.LeakyReLU(0.2),
                           nn.Linear(critic_hidden, 1))
    return AcaiNets(encoder, decoder, critic)


def interpolate(nets: AcaiNets, x: Tensor, alpha: Tensor) -> Tensor:
    """``g(alpha f(x) + (1 - alpha) f(x.flip(0)))`` with ``alpha [B]``."""
    z = nets.encoder(x)
    mixed = alpha.unsqueeze(1) * z + (1 - alpha.unsqueeze(1)) * z.flip(0)
    return nets.decoder(mixed)


def critic_loss(nets: AcaiNets, x: Tensor, alpha: Tensor, gamma: float = 0.2) -> Tensor:
    """``L_d`` (module docstring); the autoencoder's outputs are detached."""
    with torch.no_grad():
        x_hat_alpha = interpolate(nets, x, alpha)
        blend = gamma * x + (1 - gamma) * nets.decoder(nets.encoder(x))
    return ((nets.critic(x_hat_alpha).squeeze(1) - alpha).pow(2).mean()
            + nets.critic(blend).squeeze(1).pow(2).mean())


def autoencoder_loss(nets: AcaiNets, x: Tensor, alpha: Tensor, regulariser: float = 0.5
                     ) -> Tensor:
    """``L_{f,g}`` (module docstring)."""
    reconstruction = (nets.decoder(nets.encoder(x)) - x).pow(2).mean()
    return reconstruction + regulariser * nets.critic(interpolate(nets, x, alpha)).pow(2).mean()


def signed(x: Tensor) -> Tensor:
    """Pixels in ``[0, 1]`` to ``[-1, 1]``: ``2 x - 1``."""
    return 2 * x - 1


class Signed(nn.Module):
    """`signed` as a layer (the fitted embedding's first step)."""

    def forward(self, x: Tensor) -> Tensor:
        return signed(x)


def draw_alpha(batch: int, generator: torch.Generator) -> Tensor:
    """``alpha ~ U[0, 0.5]`` per pair."""
    return 0.5 * torch.rand(batch, generator=generator)


class AcaiFit(NamedTuple):
    """What `fit_steps` runs for an ACAI: the nets, the two players and the minibatch draws
    (images and their ``alpha``)."""

    nets: AcaiNets
    players: list[Player]
    draw: Callable[[], tuple[Tensor, Tensor]]


def acai_fit(x: Tensor, dims: int, seed: int = 0, hidden: int = 512, critic_hidden: int = 256,
             batch_size: int = 128, lr: float = 1e-3, gamma: float = 0.2,
             regulariser: float = 0.5, activation: str = "leaky_relu") -> AcaiFit:
    """The nets (initialised under ``seed``), Adam players and seeded draws of an ACAI on the
    flat signed images ``x``: critic and autoencoder stepping in turn on each minibatch."""
    dims, hidden = check_positive_int("dims", dims), check_positive_int("hidden", hidden)
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
    if regulariser < 0:
        raise ValueError(f"regulariser (lambda) must be >= 0, got {regulariser!r}")
    generator = torch.Generator().manual_seed(int(seed))
    with seeded(seed):
        nets = acai_nets(x.shape[1], hidden, dims,
                         check_positive_int("critic_hidden", critic_hidden), activation)
    draw_x = uniform_batches(x, batch_size, generator)

    def draw():
        batch = draw_x()
        return batch, draw_alpha(len(batch), generator)

    autoencoder = [*nets.encoder.parameters(), *nets.decoder.parameters()]
    players = [
        Player("critic", torch.optim.Adam(nets.critic.parameters(), lr=lr),
               lambda b: critic_loss(nets, *b, gamma=gamma)),
        Player("autoencoder", torch.optim.Adam(autoencoder, lr=lr),
               lambda b: autoencoder_loss(nets, *b, regulariser=regulariser)),
    ]
    return AcaiFit(nets, players, draw)


def fit_acai(images: Tensor, dims: int, seed: int = 0, hidden: int = 512,
             critic_hidden: int = 256, steps: int = 2000, batch_size: int = 128,
             lr: float = 1e-3, gamma: float = 0.2, regulariser: float = 0.5,
             activation: str = "leaky_relu"):
    """The encoder ``f`` of an ACAI (`acai_fit`) fitted for ``steps`` steps of the shared
    loop, `fit_steps`."""
    x = signed(images.reshape(len(images), -1).float())
    fit = acai_fit(x, dims, seed, hidden, critic_hidden, batch_size, lr, gamma, regulariser,
                   activation)
    fit_steps(fit.players, fit.draw, steps, modules=fit.nets)
    return frozen_encoder(nn.Sequential(nn.Flatten(), Signed(), fit.nets.encoder))
