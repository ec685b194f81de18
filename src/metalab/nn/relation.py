"""The two networks of Relation Networks (Sung et al., CVPR 2018, Figure 2 and section 3.4).

- `RelationEmbedding` (the paper's embedding module ``f_phi``): four [3x3 conv, batch
  norm, ReLU] blocks with 2x2 max-pooling in the first two only, so it returns feature maps
  ``[N, hidden, s, s]`` rather than a vector. As in the authors' Omniglot code, the two
  pooled blocks convolve without padding and the two others with padding 1: a 28x28 image
  gives 5x5 maps (84x84 gives 19x19). `Conv4` pools in all four blocks and flattens, which
  leaves a 1x1 map on 28x28 inputs: too small for the relation module's two poolings.
- `RelationModule` (``g_phi``): two [3x3 conv (padding 1), batch norm, ReLU, 2x2 max-pool]
  blocks on the concatenated maps, then FC(``fc_hidden``) + ReLU and FC(1) + sigmoid: a
  relation score in [0, 1] per pair.

Batch norm is `TaskBatchNorm` (transductive per batch, no running statistics), the
meta-learning convention; the authors' code also normalised with the batch's statistics at
test time (``momentum=1`` in training mode).
"""

from __future__ import annotations

from torch import Tensor, nn

from metalab.nn.norm import TaskBatchNorm
from metalab.nn.pool import MaxPool2d


def _block(in_channels: int, out_channels: int, *, padding: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size=3,
                                         padding=padding),
                               TaskBatchNorm(out_channels), nn.ReLU()]
    if pool:
        layers.append(MaxPool2d(2))
    return nn.Sequential(*layers)


class RelationEmbedding(nn.Module):
    """The embedding module ``f_phi``: ``[N, C, S, S]`` images to ``[N, hidden, s, s]`` maps.

    ``feature_shape`` is ``(hidden, s, s)`` with ``s = ((S - 2) // 2 - 2) // 2``.
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64, image_size: int = 28) -> None:
        super().__init__()
        side = ((image_size - 2) // 2 - 2) // 2
        if side < 1:
            raise ValueError(f"image_size must be >= 10 for two unpadded 3x3 convolutions "
                             f"and two 2x2 poolings, got {image_size}")
        self.feature_shape = (hidden, side, side)
        self.body = nn.Sequential(
            _block(in_channels, hidden, padding=0, pool=True),
            _block(hidden, hidden, padding=0, pool=True),
            _block(hidden, hidden, padding=1, pool=False),
            _block(hidden, hidden, padding=1, pool=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class RelationModule(nn.Module):
    """The relation module ``g_phi``: ``[P, 2C, s, s]`` concatenated pairs to scores ``[P]``.

    Args:
        feature_shape: ``(C, s, s)`` of one embedding's feature map (the input has ``2C``
            channels: a class map and a query map concatenated).
        hidden: filters of the two conv blocks (64 in the paper).
        fc_hidden: width of the first fully connected layer (8 in the paper).
    """

    def __init__(self, feature_shape: tuple[int, int, int], hidden: int = 64,
                 fc_hidden: int = 8) -> None:
        super().__init__()
        channels, height, width = feature_shape
        side_h, side_w = height // 2 // 2, width // 2 // 2
        if min(side_h, side_w) < 1:
            raise ValueError(f"feature_shape must have maps of side >= 4 for two 2x2 "
                             f"poolings, got {tuple(feature_shape)}")
        self.convs = nn.Sequential(
            _block(2 * channels, hidden, padding=1, pool=True),
            _block(hidden, hidden, padding=1, pool=True),
            nn.Flatten(),
        )
        self.fc = nn.Sequential(nn.Linear(hidden * side_h * side_w, fc_hidden), nn.ReLU(),
                                nn.Linear(fc_hidden, 1), nn.Sigmoid())

    def forward(self, pairs: Tensor) -> Tensor:
        return self.fc(self.convs(pairs)).squeeze(-1)
