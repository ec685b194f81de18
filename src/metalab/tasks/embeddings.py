"""Embedding functions fitted on unlabelled images, for CACTUs' clustering and its baselines.

An embedding maps images ``[N, C, H, W]`` to features ``[N, D]``; it is fitted on the
unlabelled meta-training images only and is a pure function of them and its seed.

- ``pixels``: the flattened images (the control without any embedding);
- ``pca``: projection on the top ``dims`` principal directions of the centred training
  pixels, ``z = V_d^T (x - mean)`` with ``V_d`` the leading eigenvectors of the covariance
  (signs fixed so each direction's largest-magnitude entry is positive);
- ``random``: a Gaussian random projection ``z = R^T (x - mean) / sqrt(dims)``;
- ``autoencoder``: the code of a small fully connected autoencoder (pixels -> ``hidden`` ->
  ``dims`` -> ``hidden`` -> pixels, ReLU, sigmoid output) trained to minimise the mean
  squared reconstruction error with Adam;
- ``acai`` (`metalab.tasks.acai`), ``bigan`` (`metalab.tasks.bigan`), ``deepcluster``
  (`metalab.tasks.deepcluster`): the paper's learned embeddings.

The learned ones are fitted once before meta-training, like PCA's eigendecomposition, by
the one loop of `metalab.tasks.embedding_training`; none is itself a meta-learner.
Options a fit does not take are an error naming them (`fit_embedding`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor, nn

from metalab.tasks.acai import fit_acai
from metalab.tasks.bigan import fit_bigan
from metalab.tasks.deepcluster import fit_deepcluster
from metalab.tasks.embedding_training import (
    Player,
    fit_steps,
    frozen_encoder,
    seeded,
    uniform_batches,
)
from metalab.validation import check_positive_int

EmbeddingFn = Callable[[Tensor], Tensor]


def _flat(images: Tensor) -> Tensor:
    if images.dim() < 2:
        raise ValueError(f"images must be [N, ...], got shape {tuple(images.shape)}")
    return images.reshape(len(images), -1).to(torch.float64)


def fit_pixels(images: Tensor, **_) -> EmbeddingFn:
    return lambda x: _flat(x).float()


def fit_pca(images: Tensor, dims: int, **_) -> EmbeddingFn:
    """``z = V_d^T (x - mean)`` on the training images (float64 eigendecomposition)."""
    x = _flat(images)
    dims = check_positive_int("dims", dims)
    if dims > x.shape[1]:
        raise ValueError(f"dims={dims} but the images have {x.shape[1]} pixels")
    mean = x.mean(0)
    centred = x - mean
    covariance = centred.T @ centred / max(len(x) - 1, 1)
    _, vectors = torch.linalg.eigh(covariance)  # ascending eigenvalues
    basis = vectors[:, -dims:].flip(1)
    signs = torch.sign(basis.gather(0, basis.abs().argmax(0, keepdim=True)))
    basis = basis * signs
    return lambda new: ((_flat(new) - mean) @ basis).float()


def fit_random(images: Tensor, dims: int, seed: int = 0, **_) -> EmbeddingFn:
    x = _flat(images)
    dims = check_positive_int("dims", dims)
    generator = torch.Generator().manual_seed(int(seed))
    projection = torch.randn(x.shape[1], dims, generator=generator, dtype=torch.float64)
    mean = x.mean(0)
    return lambda new: ((_flat(new) - mean) @ projection / dims ** 0.5).float()


class _Autoencoder(nn.Module):
    def __init__(self, pixels: int, hidden: int, dims: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(pixels, hidden), nn.ReLU(), nn.Linear(hidden, dims))
        self.decoder = nn.Sequential(nn.Linear(dims, hidden), nn.ReLU(), nn.Linear(hidden, pixels),
                                     nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


def fit_autoencoder(images: Tensor, dims: int, seed: int = 0, hidden: int = 512,
                    steps: int = 2000, batch_size: int = 128, lr: float = 1e-3
                    ) -> EmbeddingFn:
    """The encoder of an autoencoder fitted by Adam on the reconstruction error (the shared
    loop, `fit_steps`)."""
    x = images.reshape(len(images), -1).float()
    dims = check_positive_int("dims", dims)
    generator = torch.Generator().manual_seed(int(seed))
    with seeded(seed):
        model = _Autoencoder(x.shape[1], check_positive_int("hidden", hidden), dims)
    loss = Player("autoencoder", torch.optim.Adam(model.parameters(), lr=lr),
                  lambda batch: (model(batch) - batch).pow(2).mean())
    fit_steps([loss], uniform_batches(x, batch_size, generator), steps, modules=[model])
    return frozen_encoder(nn.Sequential(nn.Flatten(), model.encoder))


EMBEDDINGS: dict[str, Callable[..., EmbeddingFn]] = {
    "pixels": fit_pixels,
    "pca": fit_pca,
    "random": fit_random,
    "autoencoder": fit_autoencoder,
    "acai": fit_acai,
    "bigan": fit_bigan,
    "deepcluster": fit_deepcluster,
}


def fit_embedding(name: str, images: Tensor, **options) -> EmbeddingFn:
    """The embedding ``name`` fitted on ``images`` (options: ``dims``, ``seed``, ...)."""
    if name not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {sorted(EMBEDDINGS)}, got {name!r}")
    fit = EMBEDDINGS[name]
    parameters = inspect.signature(fit).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        known = sorted(set(parameters) - {"images"})
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"embedding {name!r} options {unknown} are unknown; known: {known}")
    return fit(images, **options)
