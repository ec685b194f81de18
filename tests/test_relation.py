"""Relation Networks against the paper's equations written out by hand, in float64.

The expected side recomputes f(x) with a fixed linear map, the class feature maps as sums
(section 3.2), the pairs as (class map, query map) channels, a linear-sigmoid relation
score, eq. 3's MSE to one-hot and the accuracy in plain Python; the paper's relation module
is recomputed from `torch.nn.functional` primitives. The planted-bug tests show that a
mean over shots, swapped channels or a cross-entropy loss would fail these checks.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import metalab
from helpers import classification_batch
from metalab.algorithms import ALGORITHMS
from metalab.algorithms import relation as relation_module
from metalab.algorithms.relation import RelationNet
from metalab.nn import MODELS, Conv4, RelationEmbedding, RelationModule
from metalab.train.build import build_meta_learner
from metalab.train.config import load_config

CONFIGS = Path(metalab.__file__).parent / "configs"
MAP_SHAPE = (2, 2, 2)  # channels, height, width of the toy embedding's maps


class MapEmbedding(nn.Module):
    """A fixed linear map from images to ``[N, 2, 2, 2]`` feature maps."""

    feature_shape = MAP_SHAPE

    def __init__(self, features: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(8, features, generator=g, dtype=torch.float64)
                                   / math.sqrt(features))

    def forward(self, x):
        return (x.flatten(1) @ self.weight.T).view(-1, *MAP_SHAPE)


class LinearRelation(nn.Module):
    """``sigmoid(w . flatten(pair) + b)``: a relation module the test can recompute."""

    def __init__(self, seed: int = 1) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(16, generator=g, dtype=torch.float64))
        self.bias = nn.Parameter(torch.tensor(0.1, dtype=torch.float64))

    def forward(self, pairs):
        return torch.sigmoid(pairs.flatten(1) @ self.weight + self.bias)


def _embed_by_hand(embedding, x):
    """f(x) as nested lists [C][H][W] of floats, from the weight matrix entry by entry."""
    pixels = [float(v) for v in x.flatten()]
    flat = [sum(w * p for w, p in zip(row.tolist(), pixels, strict=True))
            for row in embedding.weight.detach()]
    c, h, w = MAP_SHAPE
    return [[[flat[(ci * h + hi) * w + wi] for wi in range(w)] for hi in range(h)]
            for ci in range(c)]


def _sum_maps(maps):
    c, h, w = MAP_SHAPE
    return [[[sum(m[ci][hi][wi] for m in maps) for wi in range(w)] for hi in range(h)]
            for ci in range(c)]


def _flatten(map_):
    return [v for channel in map_ for row in channel for v in row]


def _scores_by_hand(embedding, relation, sx, sy, qx, ways):
    """r[j][i] = sigmoid(w . [flatten(F_i), flatten(f(x_j))] + b), F_i the sum over shots."""
    support = [_embed_by_hand(embedding, x) for x in sx]
    class_maps = [_sum_maps([m for m, y in zip(support, sy, strict=True) if int(y) == k])
                  for k in range(ways)]
    w, b = relation.weight.detach().tolist(), float(relation.bias.detach())
    rows = []
    for x in qx:
        query = _flatten(_embed_by_hand(embedding, x))
        row = []
        for k in range(ways):
            pair = _flatten(class_maps[k]) + query  # class channels first, then the query's
            z = sum(wi * pi for wi, pi in zip(w, pair, strict=True)) + b
            row.append(1.0 / (1.0 + math.exp(-z)))
        rows.append(row)
    return rows, class_maps


def _toy_learner(seed=0, strategy="loop"):
    return RelationNet(MapEmbedding(16, seed), relation=LinearRelation(seed + 1),
                       strategy=strategy)


def _toy_batch(seed=3):
    return classification_batch(tasks=2, ways=3, shots=2, queries=2, size=4, seed=seed)


def _check_against_hand(learner, batch):
    losses, metrics = learner.task_losses(batch)
    for t in range(len(batch)):
        rows, class_maps = _scores_by_hand(learner.model, learner.relation, batch.support_x[t],
                                           batch.support_y[t], batch.query_x[t], 3)
        state = learner.adapt_task(batch.support_x[t], batch.support_y[t], training=False,
                                   ways=3)
        torch.testing.assert_close(state, torch.tensor(class_maps, dtype=torch.float64),
                                   rtol=1e-12, atol=1e-12)
        scores = learner.adapt(batch.support_x[t], batch.support_y[t])(batch.query_x[t])
        torch.testing.assert_close(scores, torch.tensor(rows, dtype=torch.float64),
                                   rtol=1e-12, atol=1e-12)
        labels = [int(y) for y in batch.query_y[t]]
        mse = sum((r - float(k == y)) ** 2 for row, y in zip(rows, labels, strict=True)
                  for k, r in enumerate(row)) / (len(rows) * 3)
        assert losses[t].item() == pytest.approx(mse, rel=1e-12)
        hits = [max(range(3), key=row.__getitem__) == y
                for row, y in zip(rows, labels, strict=True)]
        assert metrics["accuracy"][t].item() == pytest.approx(sum(hits) / len(hits))


def test_class_maps_scores_loss_and_accuracy_match_the_equations():
    _check_against_hand(_toy_learner(), _toy_batch())


def test_evaluation_scores_with_the_same_loss_as_training():
    learner, batch = _toy_learner(), _toy_batch()
    train_losses, _ = learner.task_losses(batch)
    eval_losses, _ = learner.task_losses(batch, training=False)
    torch.testing.assert_close(eval_losses, train_losses.detach(), rtol=1e-12, atol=1e-12)
    assert learner.loss_name == "mse_one_hot" and learner.metric_name == "accuracy"


_SUM_MAPS = relation_module.class_feature_maps
_PAIRS = relation_module.relation_pairs


def _mean_class_maps(features, labels, ways):
    counts = relation_module.one_hot(labels, ways, features.dtype).sum(0)
    return _SUM_MAPS(features, labels, ways) / counts.view(-1, 1, 1, 1)


def _query_first_pairs(class_maps, query_maps):
    pairs = _PAIRS(class_maps, query_maps)
    half = pairs.shape[1] // 2
    return torch.cat((pairs[:, half:], pairs[:, :half]), dim=1)


@pytest.mark.parametrize("bug", ["mean over shots", "query channels first", "cross-entropy"])
def test_planted_bugs_fail_the_hand_check(bug, monkeypatch):
    if bug == "mean over shots":
        monkeypatch.setattr(relation_module, "class_feature_maps", _mean_class_maps)
    elif bug == "query channels first":
        monkeypatch.setattr(relation_module, "relation_pairs", _query_first_pairs)
    else:
        monkeypatch.setattr(RelationNet, "loss_fn",
                            lambda self, outputs, targets: F.cross_entropy(outputs, targets))
    with pytest.raises(AssertionError):
        _check_against_hand(_toy_learner(), _toy_batch())


def test_vmap_matches_the_loop_with_the_paper_modules():
    torch.manual_seed(0)
    batch = classification_batch(tasks=3, ways=3, shots=2, queries=2, size=28, seed=2)
    loop = RelationNet(RelationEmbedding(1, hidden=4, image_size=28), relation_hidden=3,
                       fc_hidden=2).double()
    vmap = RelationNet(RelationEmbedding(1, hidden=4, image_size=28), relation_hidden=3,
                       fc_hidden=2, strategy="vmap").double()
    vmap.load_state_dict(loop.state_dict())
    loop_loss = loop.meta_loss(batch)[0]
    vmap_loss = vmap.meta_loss(batch)[0]
    torch.testing.assert_close(vmap_loss, loop_loss, rtol=1e-12, atol=1e-12)
    loop_loss.backward()
    vmap_loss.backward()
    for (name, p), q in zip(loop.named_parameters(), vmap.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_toy_vmap_matches_the_loop():
    batch = _toy_batch(seed=5)
    loop = _toy_learner().task_losses(batch)[0]
    vmap = _toy_learner(strategy="vmap").task_losses(batch)[0]
    torch.testing.assert_close(vmap, loop, rtol=1e-12, atol=1e-12)


def _relation_module_by_hand(module, pairs):
    """g(pairs) from F.conv2d, batch statistics, ReLU, 2x2 max over windows, linear, 1/(1+e^-z)."""
    h = pairs
    for block in (module.convs[0], module.convs[1]):
        conv, norm = block[0], block[1]
        h = F.conv2d(h, conv.weight, conv.bias, padding=1)
        mean = h.mean(dim=(0, 2, 3), keepdim=True)
        var = ((h - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        h = (h - mean) / torch.sqrt(var + norm.eps)
        h = h * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
        h = torch.where(h > 0, h, torch.zeros_like(h))
        n, c, height, width = h.shape
        h = h[:, :, :height // 2 * 2, :width // 2 * 2]
        h = h.reshape(n, c, height // 2, 2, width // 2, 2).amax(dim=(3, 5))
    first, second = module.fc[0], module.fc[2]
    z = torch.where((a := h.flatten(1) @ first.weight.T + first.bias) > 0, a, 0 * a)
    z = z @ second.weight.T + second.bias
    return 1.0 / (1.0 + torch.exp(-z[:, 0]))


@pytest.mark.parametrize("shape", [(2, 5, 5), (3, 4, 6)])
def test_relation_module_matches_its_layers_by_hand(shape):
    torch.manual_seed(1)
    module = RelationModule(shape, hidden=3, fc_hidden=4).double()
    for p in module.parameters():  # non-trivial affine batch norm too
        nn.init.normal_(p)
    pairs = torch.randn(7, 2 * shape[0], shape[1], shape[2], dtype=torch.float64)
    scores = module(pairs)
    assert scores.shape == (7,)
    torch.testing.assert_close(scores, _relation_module_by_hand(module, pairs),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("image_size", "side"), [(28, 5), (84, 19)])
def test_embedding_keeps_maps_and_pools_only_in_the_first_two_blocks(image_size, side):
    embedding = RelationEmbedding(1, hidden=4, image_size=image_size)
    assert embedding.feature_shape == (4, side, side)
    assert embedding(torch.randn(3, 1, image_size, image_size)).shape == (3, 4, side, side)
    pools = [any(isinstance(m, nn.MaxPool2d) for m in block) for block in embedding.body]
    paddings = [block[0].padding for block in embedding.body]
    assert pools == [True, True, False, False]
    assert paddings == [(0, 0), (0, 0), (1, 1), (1, 1)]


def test_scores_lie_in_the_unit_interval_and_are_equivariant_to_support_order():
    torch.manual_seed(0)
    learner = RelationNet(RelationEmbedding(1, hidden=4, image_size=28), relation_hidden=3,
                          fc_hidden=2).double()
    batch = classification_batch(tasks=1, ways=4, shots=2, queries=3, size=28, seed=7)
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    scores = learner.adapt(sx, sy)(qx)
    assert scores.shape == (12, 4)
    assert bool(((scores >= 0) & (scores <= 1)).all())
    order = torch.randperm(len(sy), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(learner.adapt(sx[order], sy[order])(qx), scores,
                               rtol=1e-12, atol=1e-12)
    relabel = torch.tensor([2, 0, 3, 1])  # class k becomes relabel[k]: columns follow
    torch.testing.assert_close(learner.adapt(sx, relabel[sy])(qx)[:, relabel], scores,
                               rtol=1e-12, atol=1e-12)


def test_meta_gradient_reaches_the_embedding_and_the_relation_module():
    assert ALGORITHMS["relation"] is RelationNet
    assert MODELS["relation-embedding"] is RelationEmbedding
    learner = RelationNet(RelationEmbedding(1, hidden=4, image_size=28), relation_hidden=3,
                          fc_hidden=2).double()
    batch = classification_batch(tasks=2, ways=3, shots=1, queries=2, size=28, seed=1)
    learner.meta_loss(batch)[0].backward()
    for name, p in learner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_a_model_without_feature_maps_is_a_clear_error():
    with pytest.raises(ValueError, match="feature_shape"):
        RelationNet(Conv4(out_features=None))


def test_the_config_builds_the_paper_modules():
    config = load_config(CONFIGS / "relation-glyphs-5w1s.yaml")
    learner = build_meta_learner(config)
    assert isinstance(learner, RelationNet)
    assert isinstance(learner.model, RelationEmbedding)
    assert learner.model.feature_shape == (64, 5, 5)
    assert learner.relation.fc[0].out_features == 8
