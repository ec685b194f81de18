"""``data.unsupervised``: meta-training tasks built from the unlabelled training images.

The training split's images are taken through an `UnlabelledImages` view (no label can be
read from it) and turned into tasks by one of two constructions; validation and meta-test
use the ordinary labelled episodes of their splits.

- ``method: cactus`` (`metalab.tasks.cactus`): ``embedding`` (``pixels``, ``pca``,
  ``random``, ``autoencoder``, ``acai``, ``bigan``, ``deepcluster``;
  `metalab.tasks.embeddings`) of ``dims`` dimensions, fitted
  on the training images; ``partitions`` k-means runs of ``clusters`` clusters each (at
  most ``iterations`` Lloyd rounds), on random rescalings (``scaling``);
  ``embedding_options`` go to the embedding's fit
  (``steps``, ``hidden`` ... of a learned embedding; unknown ones are an error).
  ``seed`` seeds the embedding and the partitions (the task draws use the run's seed).
- ``method: umtra`` (`metalab.tasks.umtra`): ``augment`` (a preset or a mapping of
  `metalab.tasks.image_augmentation`, default ``characters``; ``none`` for the ablation)
  makes the queries.

A string is short for ``{method: <string>}`` with the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from torch import Tensor

from metalab.tasks.cactus import CactusTasks, cactus_partitions
from metalab.tasks.embeddings import EMBEDDINGS, fit_embedding
from metalab.tasks.image_augmentation import parse_augmentation
from metalab.tasks.source import TaskSource
from metalab.tasks.umtra import UmtraTasks
from metalab.tasks.unlabelled import UnlabelledImages

METHODS = ("cactus", "umtra")


@dataclass(frozen=True)
class UnsupervisedSpec:
    """The parsed ``data.unsupervised`` (module docstring)."""

    method: str
    embedding: str = "pca"
    dims: int = 32
    partitions: int = 20
    clusters: int = 100
    scaling: bool = True
    iterations: int = 50
    seed: int = 0
    embedding_options: dict = field(default_factory=dict)
    augment: Any = "characters"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"data.unsupervised.method must be one of {list(METHODS)}, got "
                             f"{self.method!r}")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"data.unsupervised.embedding must be one of {sorted(EMBEDDINGS)}, "
                             f"got {self.embedding!r}")
        for name in ("dims", "partitions", "clusters", "iterations"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"data.unsupervised.{name} must be a positive integer, got "
                                 f"{value!r}")
        if not isinstance(self.embedding_options, dict):
            raise ValueError(f"data.unsupervised.embedding_options must be a mapping, got "
                             f"{self.embedding_options!r}")
        parse_augmentation(self.augment)  # a clear error now rather than at the first task


def parse_unsupervised(spec: Any) -> UnsupervisedSpec:
    """``data.unsupervised``: ``cactus``/``umtra`` or a mapping with ``method`` and options."""
    if isinstance(spec, str):
        return UnsupervisedSpec(method=spec)
    if not isinstance(spec, dict) or "method" not in spec:
        raise ValueError(f"data.unsupervised must be one of {list(METHODS)} or a mapping with "
                         f"a method, got {spec!r}")
    known = {f.name for f in fields(UnsupervisedSpec)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ValueError(f"data.unsupervised keys {unknown} are unknown; known: {sorted(known)}")
    return UnsupervisedSpec(**spec)


def embed_images(images: UnlabelledImages, spec: UnsupervisedSpec) -> Tensor:
    """Features ``[N, dims]`` of the images under the spec's embedding, fitted on them."""
    embedding = fit_embedding(spec.embedding, images.images, dims=spec.dims, seed=spec.seed,
                              **spec.embedding_options)
    return embedding(images.images)


def build_partitions(images: UnlabelledImages, spec: UnsupervisedSpec) -> Tensor:
    """CACTUs' ``[P, N]`` cluster assignments of the images."""
    features = embed_images(images, spec).float()
    return cactus_partitions(features, spec.partitions, spec.clusters, seed=spec.seed,
                             scaling=spec.scaling, iterations=spec.iterations)


def unsupervised_source(images: UnlabelledImages, spec: UnsupervisedSpec, ways: int,
                        shots: int, queries: int, tasks_per_batch: int, seed: int,
                        partitions: Tensor | None = None) -> TaskSource:
    """The task source of ``spec`` (``partitions``: CACTUs' precomputed clusters)."""
    if spec.method == "umtra":
        return UmtraTasks(images, ways, queries, parse_augmentation(spec.augment),
                          tasks_per_batch=tasks_per_batch, seed=seed)
    if partitions is None:
        partitions = build_partitions(images, spec)
    return CactusTasks(images, partitions, ways, shots, queries,
                       tasks_per_batch=tasks_per_batch, seed=seed)
