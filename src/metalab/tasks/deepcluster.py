"""DeepCluster (Caron, Bojanowski, Joulin & Douze 2018, "Deep Clustering for Unsupervised
Learning of Visual Features"); its convnet's features are an embedding for CACTUs.

A small convnet ``f`` (two 3x3 conv-BN-ReLU-maxpool blocks of ``channels`` and
``2 channels`` maps, then ``hidden`` ReLU units and a ``dims``-dimensional feature layer)
and a linear head ``W`` over ``clusters`` pseudo-classes alternate, every round of
``steps / rounds`` steps, between

1. clustering: the features of every training image (eval mode) are PCA-whitened and
   L2-normalised (the paper's preprocessing), then k-means (`metalab.tasks.kmeans`) gives
   each image a pseudo-label ``y_n`` in ``{0, ..., clusters - 1}``; a cluster left empty
   by Lloyd's updates is reassigned (k-means re-seeds it with the worst-fitted point, so
   every pseudo-class has members; the paper instead splits a random non-empty cluster:
   either way no pseudo-class is empty);
2. training: ``W`` is re-initialised (as the paper's top layer every epoch; its Adam state
   cleared), then ``f`` and ``W`` minimise the cross-entropy ``-log softmax(W f(x_n))_{y_n}``
   on minibatches drawn uniformly over the clusters (image ``n`` with probability
   ``1 / (clusters * |cluster(y_n)|)``, paper section 3.3: so a large cluster cannot
   dominate).

Not reproduced: the Sobel filtering and random crops (for colour ImageNet photos), the
AlexNet/VGG size, and SGD with momentum (Adam here, for the short CPU budget).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalab.tasks.embedding_training import Player, fit_steps, frozen_encoder, seeded
from metalab.tasks.kmeans import kmeans
from metalab.validation import check_positive_int


def deepcluster_convnet(in_channels: int, height: int, width: int, channels: int,
                        hidden: int, dims: int) -> nn.Sequential:
    """``f``: images ``[N, C, H, W]`` to features ``[N, dims]``."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.MaxPool2d(2)]

    flat = 2 * channels * (height // 4) * (width // 4)
    if flat == 0:
        raise ValueError(f"deepcluster needs images of at least 4x4 pixels, got {height}x{width}")
    return nn.Sequential(*block(in_channels, channels), *block(channels, 2 * channels),
                         nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(),
                         nn.Linear(hidden, dims))


def whiten_and_normalise(features: Tensor, eps: float = 1e-5) -> Tensor:
    """PCA whitening then L2 normalisation of rows: ``u = V^T (f - mean) / sqrt(lambda + eps)``
    (``V``, ``lambda``: eigenvectors and eigenvalues of the features' covariance),
    ``u / ||u||`` (float64)."""
    f = features.double()
    centred = f - f.mean(0)
    values, vectors = torch.linalg.eigh(centred.T @ centred / max(len(f) - 1, 1))
    u = centred @ vectors / (values.clamp_min(0) + eps).sqrt()
    return u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)


def pseudo_labels(features: Tensor, clusters: int, generator: torch.Generator,
                  iterations: int = 20) -> Tensor:
    """k-means cluster ids ``[N]`` of the whitened, normalised features (none empty)."""
    return kmeans(whiten_and_normalise(features), clusters, generator, iterations).assignments


def cluster_uniform_weights(labels: Tensor, clusters: int) -> Tensor:
    """Sampling probability of each image, ``1 / (clusters * |cluster of the image|)``."""
    counts = torch.bincount(labels, minlength=clusters).double()
    return 1.0 / (clusters * counts[labels])


def fit_deepcluster(images: Tensor, dims: int, seed: int = 0, channels: int = 16,
                    hidden: int = 512, clusters: int = 200, rounds: int = 10,
                    iterations: int = 20, steps: int = 1000, batch_size: int = 128,
                    lr: float = 1e-3):
    """The convnet ``f`` fitted by DeepCluster's alternation (module docstring) through the
    shared loop `fit_steps`, one k-means clustering per round."""
    if images.dim() != 4:
        raise ValueError(f"deepcluster needs images [N, C, H, W], got {tuple(images.shape)}")
    x = images.float()
    dims, steps = check_positive_int("dims", dims), check_positive_int("steps", steps)
    clusters = check_positive_int("clusters", clusters)
    if clusters > len(x):
        raise ValueError(f"clusters={clusters} but there are only {len(x)} images")
    round_steps = math.ceil(steps / check_positive_int("rounds", rounds))
    batch_size = check_positive_int("batch_size", min(batch_size, len(x)))
    generator = torch.Generator().manual_seed(int(seed))
    with seeded(seed):  # inits and head resets draw from the seeded global generator
        net = deepcluster_convnet(x.shape[1], x.shape[2], x.shape[3],
                                  check_positive_int("channels", channels),
                                  check_positive_int("hidden", hidden), dims)
        head = nn.Linear(dims, clusters)
        optimizer = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=lr)
        state = {}

        def new_round(_: int) -> None:
            net.eval()
            with torch.no_grad():
                features = torch.cat([net(x[i:i + 1024]) for i in range(0, len(x), 1024)])
            state["labels"] = pseudo_labels(features, clusters, generator, iterations)
            state["weights"] = cluster_uniform_weights(state["labels"], clusters)
            head.reset_parameters()
            for parameter in head.parameters():
                optimizer.state.pop(parameter, None)
            net.train()

        def draw() -> tuple[Tensor, Tensor]:
            index = torch.multinomial(state["weights"], batch_size, replacement=True,
                                      generator=generator)
            return x[index], state["labels"][index]

        player = Player("classifier", optimizer,
                        lambda b: F.cross_entropy(head(net(b[0])), b[1]))
        fit_steps([player], draw, steps, modules=[net, head], round_steps=round_steps,
                  new_round=new_round)
    return frozen_encoder(net)
