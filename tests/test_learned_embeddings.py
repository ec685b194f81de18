"""The learned embeddings of CACTUs (ACAI, BiGAN, DeepCluster) and their one training loop:
losses against hand computations in float64, reproducibility from a seed, and no training
label read on the way to meta-training."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from metalab.tasks import deepcluster as dc
from metalab.tasks.acai import (
    AcaiNets,
    acai_nets,
    autoencoder_loss,
    critic_loss,
    draw_alpha,
    interpolate,
)
from metalab.tasks.bigan import (
    BiganNets,
    discriminator_loss,
    encoder_generator_loss,
    joint_logits,
)
from metalab.tasks.embedding_training import Player, fit_steps
from metalab.tasks.embeddings import fit_embedding
from metalab.tasks.kmeans import kmeans

LEARNED = {
    "autoencoder": {"hidden": 8, "steps": 4},
    "acai": {"hidden": 8, "critic_hidden": 4, "steps": 4},
    "bigan": {"hidden": 8, "steps": 4},
    "deepcluster": {"channels": 2, "hidden": 8, "clusters": 5, "rounds": 2, "steps": 4},
}


def linear(weight, bias=None) -> nn.Linear:
    weight = torch.tensor(weight, dtype=torch.float64)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None).double()
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias, dtype=torch.float64))
    return layer


def small_images(n: int = 40, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- ACAI


def hand_acai() -> tuple[AcaiNets, torch.Tensor, torch.Tensor]:
    """f(x) = x0 + x1, g(z) = (z, z/2), d(x) = x0 - x1; x = [(1, 0), (0, 2)]."""
    nets = AcaiNets(linear([[1.0, 1.0]]), linear([[1.0], [0.5]]), linear([[1.0, -1.0]]))
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    alpha = torch.tensor([0.1, 0.4], dtype=torch.float64)
    return nets, x, alpha


def test_acai_interpolation_and_losses_match_a_hand_computation():
    nets, x, alpha = hand_acai()
    # z = (1, 2); pairs with the reversed batch: z2 = (2, 1);
    # mixed = 0.1*1 + 0.9*2 = 1.9 and 0.4*2 + 0.6*1 = 1.4; decoded (z, z/2)
    x_hat = torch.tensor([[1.9, 0.95], [1.4, 0.7]], dtype=torch.float64)
    assert torch.allclose(interpolate(nets, x, alpha), x_hat)
    # critic on x_hat: 0.95, 0.7 (targets alpha 0.1, 0.4); reconstructions (1, .5), (2, 1);
    # blends 0.2 x + 0.8 g(f(x)) = (1, .4), (1.6, 1.2); critic on them: 0.6, 0.4
    expected_critic = ((0.95 - 0.1) ** 2 + (0.7 - 0.4) ** 2) / 2 + (0.6 ** 2 + 0.4 ** 2) / 2
    assert critic_loss(nets, x, alpha, gamma=0.2).item() == pytest.approx(expected_critic)
    # reconstruction errors (0, .5, 2, -1): mean square 5.25 / 4; lambda = 0.5
    expected_ae = 5.25 / 4 + 0.5 * (0.95 ** 2 + 0.7 ** 2) / 2
    assert autoencoder_loss(nets, x, alpha, regulariser=0.5).item() == pytest.approx(expected_ae)


def test_acai_critic_loss_leaves_the_autoencoder_without_gradient():
    nets, x, alpha = hand_acai()
    critic_loss(nets, x, alpha).backward()
    assert nets.encoder.weight.grad is None and nets.decoder.weight.grad is None
    assert nets.critic.weight.grad is not None


def all_units_off_encoder(activation: str) -> AcaiNets:
    """2 pixels -> 2 hidden -> 1 code, first layer the identity with bias -10: every hidden
    pre-activation is below -8 for pixels in [-1, 1], the state the Omniglot fit of seed 0
    ended in (every unit off for every image); code weights (1, 2)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        nets = AcaiNets(*(m.double() for m in acai_nets(2, 2, 1, 2, activation=activation)))
    with torch.no_grad():
        nets.encoder[0].weight.copy_(torch.eye(2, dtype=torch.float64))
        nets.encoder[0].bias.fill_(-10.0)
        nets.encoder[2].weight.copy_(torch.tensor([[1.0, 2.0]], dtype=torch.float64))
        nets.encoder[2].bias.zero_()
    return nets


def test_acai_codes_still_depend_on_the_image_when_every_hidden_unit_is_off():
    nets = all_units_off_encoder("leaky_relu")  # the default, as the authors' nets
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # pre-activations (-9, -10) and (-10, -9); leaky ReLU 0.2: (-1.8, -2.0), (-2.0, -1.8);
    # codes -1.8 + 2 (-2.0) = -5.8 and -2.0 + 2 (-1.8) = -5.6
    codes = nets.encoder(x).squeeze(1)
    assert torch.allclose(codes, torch.tensor([-5.8, -5.6], dtype=torch.float64))
    # and the reconstruction still trains the first layer (a ReLU unit off for every input
    # gets no gradient: the collapsed fit could not recover)
    (nets.decoder(nets.encoder(x)) - x).pow(2).mean().backward()
    assert nets.encoder[0].weight.grad.abs().sum() > 0
    relu = all_units_off_encoder("relu")  # the earlier version: constant codes, no gradient
    assert torch.equal(relu.encoder(x), torch.zeros(2, 1, dtype=torch.float64))


def test_acai_activation_must_be_known():
    with pytest.raises(ValueError, match="activation must be one of"):
        acai_nets(4, 3, 2, 2, activation="gelu")


def test_acai_alpha_is_uniform_on_zero_to_one_half():
    alpha = draw_alpha(20000, torch.Generator().manual_seed(0))
    assert 0 <= alpha.min() and alpha.max() <= 0.5
    assert alpha.mean().item() == pytest.approx(0.25, abs=0.005)


# ---------------------------------------------------------------- BiGAN


def test_bigan_losses_on_known_logits_are_the_binary_cross_entropies():
    real = torch.tensor([2.0, -1.0], dtype=torch.float64)
    fake = torch.tensor([0.5, -3.0], dtype=torch.float64)

    def sigmoid(v):
        return 1 / (1 + math.exp(-v))

    # D labels encoder pairs 1 and generator pairs 0
    d = (-math.log(sigmoid(2.0)) - math.log(sigmoid(-1.0))) / 2 \
        + (-math.log(1 - sigmoid(0.5)) - math.log(1 - sigmoid(-3.0))) / 2
    eg = (-math.log(1 - sigmoid(2.0)) - math.log(1 - sigmoid(-1.0))) / 2 \
        + (-math.log(sigmoid(0.5)) - math.log(sigmoid(-3.0))) / 2
    assert discriminator_loss(real, fake).item() == pytest.approx(d, rel=1e-12)
    assert encoder_generator_loss(real, fake).item() == pytest.approx(eg, rel=1e-12)


def test_bigan_discriminator_sees_image_code_pairs():
    # E(x) = x0 - x1, G(z) = (z, 2z), D(x, z) = x0 + 3 x1 - z
    nets = BiganNets(linear([[1.0, -1.0]]), linear([[1.0], [2.0]]), linear([[1.0, 3.0, -1.0]]))
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    z = torch.tensor([[0.5]], dtype=torch.float64)
    real, fake = joint_logits(nets, x, z, detach=True)
    assert real.item() == pytest.approx(1 + 6 - (1 - 2))        # (x, E(x)) = (1, 2, -1)
    assert fake.item() == pytest.approx(0.5 + 3 * 1.0 - 0.5)    # (G(z), z) = (.5, 1, .5)
    discriminator_loss(real, fake).backward()
    assert nets.encoder.weight.grad is None and nets.generator.weight.grad is None
    real, fake = joint_logits(nets, x, z, detach=False)
    encoder_generator_loss(real, fake).backward()
    assert nets.encoder.weight.grad is not None and nets.generator.weight.grad is not None


# ---------------------------------------------------------------- DeepCluster


def test_whitening_gives_unit_rows_of_whitened_pca_coordinates():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(200, 3, generator=g, dtype=torch.float64) @ torch.tensor(
        [[2.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, 0.3, 0.1]], dtype=torch.float64)
    u = dc.whiten_and_normalise(f, eps=0.0)
    centred = f - f.mean(0)
    # independently: whitened coordinates have identity covariance, so they are
    # sqrt(n - 1) times the left singular vectors, up to the sign of each column (in
    # ascending order of variance, as the eigendecomposition's)
    left, _, _ = torch.linalg.svd(centred, full_matrices=False)
    white = left.flip(1) * math.sqrt(len(f) - 1)
    reference = white / white.norm(dim=1, keepdim=True)
    assert torch.allclose(u.norm(dim=1), torch.ones(200, dtype=torch.float64))
    signs = torch.sign((u * reference).sum(0))
    assert torch.allclose(u, reference * signs, atol=1e-8)


def test_pseudo_labels_are_kmeans_of_the_whitened_features():
    f = torch.randn(60, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = dc.pseudo_labels(f, 6, torch.Generator().manual_seed(3), iterations=10)
    expected = kmeans(dc.whiten_and_normalise(f), 6, torch.Generator().manual_seed(3), 10)
    assert torch.equal(labels, expected.assignments)


def test_pseudo_labels_reassign_an_empty_cluster():
    # three distinct feature vectors (repeated) for four clusters: two centroids coincide,
    # Lloyd's assignment (ties to the lowest index) empties one, and it is reassigned
    base = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    f = base[torch.tensor([0] * 10 + [1] * 5 + [2] * 5)]
    labels = dc.pseudo_labels(f, 4, torch.Generator().manual_seed(0))
    assert torch.bincount(labels, minlength=4).min() >= 1


def test_minibatches_are_uniform_over_clusters():
    labels = torch.tensor([0] * 90 + [1] * 9 + [2])
    weights = dc.cluster_uniform_weights(labels, 3)
    per_cluster = torch.zeros(3, dtype=torch.float64).index_add_(0, labels, weights)
    assert torch.allclose(per_cluster, torch.full((3,), 1 / 3, dtype=torch.float64))
    assert weights[99].item() == pytest.approx(1 / 3)
    assert weights[0].item() == pytest.approx(1 / 270)


def test_deepcluster_reclusters_every_round_and_trains_on_those_pseudo_labels(monkeypatch):
    calls, drawn = [], []
    real_labels, real_fit_steps = dc.pseudo_labels, dc.fit_steps

    def recording_labels(features, clusters, generator, iterations=20):
        labels = real_labels(features, clusters, generator, iterations)
        calls.append(labels)
        return labels

    def recording_fit_steps(players, draw, steps, **kwargs):
        def recorded_draw():
            batch = draw()
            drawn.append((len(calls), batch[1]))
            return batch
        return real_fit_steps(players, recorded_draw, steps, **kwargs)

    monkeypatch.setattr(dc, "pseudo_labels", recording_labels)
    monkeypatch.setattr(dc, "fit_steps", recording_fit_steps)
    images = small_images()
    dc.fit_deepcluster(images, dims=3, channels=2, hidden=8, clusters=5, rounds=3, steps=6,
                       batch_size=10)
    assert len(calls) == 3  # one clustering per round of 2 steps
    for labels in calls:
        assert torch.bincount(labels, minlength=5).min() >= 1
    assert [r for r, _ in drawn] == [1, 1, 2, 2, 3, 3]
    assert all(set(y.tolist()) <= set(range(5)) for _, y in drawn)


# ---------------------------------------------------------------- shared loop, seeds, options


def test_fit_steps_steps_each_player_on_its_own_loss_in_turn():
    a, b = nn.Parameter(torch.tensor(1.0)), nn.Parameter(torch.tensor(1.0))
    seen = []

    def loss_a(batch):
        seen.append(("a", a.item(), b.item()))
        return (a * b - batch) ** 2

    def loss_b(batch):
        seen.append(("b", a.item(), b.item()))
        return (a * b + batch) ** 2

    players = [Player("a", torch.optim.SGD([a], lr=0.1), loss_a),
               Player("b", torch.optim.SGD([b], lr=0.1), loss_b)]
    history = fit_steps(players, lambda: 2.0, 1)
    # a: d/da (ab - 2)^2 = 2 (1 - 2) * 1 = -2 -> a = 1.2, b untouched by a's step;
    # b sees a = 1.2: d/db (ab + 2)^2 = 2 (1.2 + 2) * 1.2 = 7.68 -> b = 1 - 0.768
    assert seen == [("a", 1.0, 1.0), ("b", pytest.approx(1.2), 1.0)]
    assert a.item() == pytest.approx(1.2) and b.item() == pytest.approx(1 - 0.768)
    assert history == [{"a": 1.0, "b": pytest.approx(3.2 ** 2)}]


@pytest.mark.parametrize("name", sorted(LEARNED))
def test_a_learned_embedding_is_a_function_of_its_seed(name):
    images = small_images()
    a = fit_embedding(name, images, dims=3, seed=1, **LEARNED[name])(images)
    b = fit_embedding(name, images, dims=3, seed=1, **LEARNED[name])(images)
    c = fit_embedding(name, images, dims=3, seed=2, **LEARNED[name])(images)
    assert a.shape == (40, 3) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_embedding_options_are_an_error_naming_them():
    unknown = r"embedding 'acai' options \['critic_hiden'\] are unknown"
    with pytest.raises(ValueError, match=unknown):
        fit_embedding("acai", small_images(), dims=3, critic_hiden=4)
    with pytest.raises(ValueError, match="clusters=50 but there are only 40 images"):
        fit_embedding("deepcluster", small_images(), dims=3, clusters=50)


@pytest.mark.parametrize("name", ["acai", "bigan", "deepcluster"])
def test_meta_training_on_a_learned_embedding_never_reads_a_training_label(
        name, tmp_path, monkeypatch):
    from metalab.train import sources
    from metalab.train.config import resolve
    from metalab.train.run import train_run
    from test_unsupervised import UNSUPERVISED, trap_training_labels

    trap_training_labels(monkeypatch)
    data = dict(UNSUPERVISED["data"])
    options = {**LEARNED[name], **({"clusters": 20} if name == "deepcluster" else {})}
    data["unsupervised"] = {**data["unsupervised"], "embedding": name,
                            "embedding_options": options}
    try:
        trainer = train_run(resolve({**UNSUPERVISED, "data": data}), tmp_path / "run")
        assert trainer.step == 2
    finally:
        sources._unlabelled.cache_clear()
        sources._cached_partitions.cache_clear()
