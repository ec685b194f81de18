"""Unsupervised meta-learning tasks: k-means, CACTUs partitions and tasks, UMTRA, and the
guarantee that no label reaches meta-training."""

from __future__ import annotations

import pytest
import torch

from metalab.tasks.cactus import CactusTasks, cactus_partitions, cluster_members
from metalab.tasks.embeddings import fit_embedding
from metalab.tasks.image_augmentation import ImageAugmentation
from metalab.tasks.kmeans import kmeans, kmeans_plus_plus
from metalab.tasks.umtra import UmtraTasks
from metalab.tasks.unlabelled import LabelAccessError, UnlabelledImages
from metalab.tasks.unsupervised import parse_unsupervised


class IndexedImages(torch.utils.data.Dataset):
    """Labelled images whose pixel (0, 0) stores the item's index (recoverable from any
    un-augmented image); the rest is one of ``groups`` noisy patterns. The labels are a
    random permutation unrelated to the patterns, so tasks built from true labels would not
    be tasks of pattern clusters."""

    def __init__(self, groups: int = 6, per_group: int = 12, size: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        n = groups * per_group
        patterns = torch.rand(groups, 1, size, size, generator=g, dtype=torch.float64)
        self.group = torch.arange(n) // per_group
        self.images = patterns[self.group] + 0.05 * torch.rand(n, 1, size, size, generator=g,
                                                               dtype=torch.float64)
        self.images[:, 0, 0, 0] = torch.arange(n, dtype=torch.float64) * 100.0
        self.labels = torch.randperm(n, generator=g) % groups

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


def index_of(images: torch.Tensor) -> torch.Tensor:
    return (images[..., 0, 0, 0] / 100.0).round().long()


def without_index_pixel(images: torch.Tensor) -> torch.Tensor:
    out = images.clone()
    out[..., 0, 0, 0] = 0
    return out


# ---------------------------------------------------------------- k-means


def test_kmeans_converges_to_the_hand_computed_clustering():
    # {0, 1, 2} and {10, 11, 12}: centroids 1 and 11, inertia (1 + 0 + 1) * 2 = 4, whatever
    # the k-means++ start (a start of 0 and 1 takes Lloyd two rounds to fix).
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]], dtype=torch.float64)
    for seed in range(20):
        result = kmeans(x, 2, torch.Generator().manual_seed(seed))
        assert sorted(result.centroids.flatten().tolist()) == [1.0, 11.0]
        assert result.inertia == 4.0
        groups = result.assignments
        assert len(set(groups[:3].tolist())) == 1 and len(set(groups[3:].tolist())) == 1
        assert groups[0] != groups[3]


def test_lloyd_moves_centroids_to_the_means_of_their_points():
    # 2-D: four corners of a square around (0, 0) and four around (5, 5); the means are the
    # square centres whatever the members' order.
    square = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]],
                          dtype=torch.float64)
    x = torch.cat([square, square + 5])
    result = kmeans(x, 2, torch.Generator().manual_seed(3))
    assert sorted(map(tuple, result.centroids.tolist())) == [(0.0, 0.0), (5.0, 5.0)]
    assert result.inertia == pytest.approx(8 * 2.0)


def test_kmeans_plus_plus_draws_the_second_centre_with_probability_proportional_to_d2():
    # x = 0, 1, 3. First centre uniform; then P(j | i) = d(i, j)^2 / sum_j d(i, j)^2:
    # i=0: [0, 1, 9]/10; i=1: [1, 0, 4]/5; i=2: [9, 4, 0]/13.
    x = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    conditional = torch.tensor([[0, 1, 9], [1, 0, 4], [9, 4, 0]], dtype=torch.float64)
    expected = conditional / conditional.sum(1, keepdim=True) / 3
    counts = torch.zeros(3, 3, dtype=torch.float64)
    draws = 3000
    for seed in range(draws):
        first, second = kmeans_plus_plus(x, 2, torch.Generator().manual_seed(seed)).tolist()
        counts[first, second] += 1
    # binomial standard error <= sqrt(0.25 / 3000) < 0.01; D (not D^2) would give 0.25 vs 0.1
    assert torch.allclose(counts / draws, expected, atol=0.03)


def test_kmeans_with_repeated_points_returns_no_empty_cluster():
    # three distinct points for four clusters: two centroids coincide and the nearest-centroid
    # assignment (ties to the lowest index) empties one; the re-seeded assignment is returned
    x = torch.tensor([[0.0], [0.0], [0.0], [0.0], [1.0], [1.0], [5.0]], dtype=torch.float64)
    result = kmeans(x, 4, torch.Generator().manual_seed(0))
    counts = torch.bincount(result.assignments, minlength=4)
    assert counts.min() >= 1 and counts.sum() == 7
    for j in range(4):  # each centroid is the mean of its points
        assert torch.allclose(result.centroids[j], x[result.assignments == j].mean(0))


def test_kmeans_rejects_more_clusters_than_points():
    with pytest.raises(ValueError, match="k=5 clusters but there are only 3 points"):
        kmeans(torch.zeros(3, 2), 5, torch.Generator())


# ---------------------------------------------------------------- CACTUs partitions


def _features(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(60, 4, generator=g, dtype=torch.float64)


def test_partitions_are_reproducible_from_a_seed_and_differ_between_seeds():
    a = cactus_partitions(_features(), partitions=3, clusters=5, seed=7)
    b = cactus_partitions(_features(), partitions=3, clusters=5, seed=7)
    c = cactus_partitions(_features(), partitions=3, clusters=5, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # the random rescaling makes the partitions of one run differ from each other
    assert not torch.equal(a[0], a[1])


def test_each_partitions_clusters_are_disjoint_nonempty_and_cover_every_image():
    partitions = cactus_partitions(_features(), partitions=4, clusters=6, seed=0)
    for assignment in partitions:
        members = cluster_members(assignment)
        assert len(members) == 6 and all(len(m) > 0 for m in members)
        everything = torch.cat(members)
        assert torch.equal(everything.sort().values, torch.arange(60))  # disjoint, covering
        for cluster, m in enumerate(members):
            assert bool((assignment[m] == cluster).all())


def test_each_partition_clusters_its_own_uniform_rescaling_of_the_embedding():
    # re-derived: partition p = k-means of diag(s_p) z with s_p ~ U(0, 1)^D, drawn (then the
    # k-means++ start) from the one seeded generator
    features = _features()
    partitions = cactus_partitions(features, partitions=2, clusters=4, seed=1)
    generator = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(2):
        scale = torch.rand(4, generator=generator, dtype=torch.float64)
        rows.append(kmeans(features * scale, 4, generator).assignments)
    assert torch.equal(partitions, torch.stack(rows))


def test_without_scaling_every_partition_is_a_plain_kmeans_run():
    features = _features()
    partitions = cactus_partitions(features, partitions=2, clusters=4, seed=1, scaling=False)
    generator = torch.Generator().manual_seed(1)
    first = kmeans(features, 4, generator).assignments
    second = kmeans(features, 4, generator).assignments
    assert torch.equal(partitions, torch.stack([first, second]))


# ---------------------------------------------------------------- no label leaks


def test_the_unlabelled_view_raises_on_any_label_access():
    view = UnlabelledImages.of(IndexedImages())
    for name in ("labels", "class_info", "class_names", "targets"):
        with pytest.raises(LabelAccessError, match="never reach"):
            getattr(view, name)
        with pytest.raises(LabelAccessError):  # not swallowed by a default
            getattr(view, name, None)
    assert isinstance(view[3], torch.Tensor)  # an item is the image alone
    assert not any(isinstance(v, torch.utils.data.Dataset) for v in vars(view).values())


def test_cactus_episode_labels_are_cluster_ids_of_the_drawn_partition():
    data = IndexedImages()
    view = UnlabelledImages.of(data)
    features = without_index_pixel(view.images).flatten(1)
    partitions = cactus_partitions(features, partitions=3, clusters=6, seed=0)
    source = CactusTasks(view, partitions, ways=3, shots=2, queries=3, tasks_per_batch=4,
                         seed=0)
    agreeing_with_true_labels = 0
    for _ in range(5):
        batch = source.sample()
        for t in range(len(batch)):
            assignment = partitions[int(batch.task_id[t])]
            x = torch.cat([batch.support_x[t], batch.query_x[t]])
            y = torch.cat([batch.support_y[t], batch.query_y[t]])
            index = index_of(x)
            assert len(set(index.tolist())) == len(index)  # distinct images
            clusters = assignment[index]
            for label in range(3):
                assert len(set(clusters[y == label].tolist())) == 1
            assert len(set(clusters.tolist())) == 3  # one cluster per label
            agreeing_with_true_labels += all(
                len(set(data.labels[index[y == label]].tolist())) == 1 for label in range(3))
    # the true labels are unrelated to the clusters: tasks of true classes would agree
    assert agreeing_with_true_labels < 5


def test_cactus_skips_partitions_without_enough_large_clusters():
    view = UnlabelledImages.of(IndexedImages(groups=2, per_group=10))
    small = torch.arange(20) % 10                 # ten clusters of 2
    large = (torch.arange(20) >= 10).long()       # two clusters of 10
    source = CactusTasks(view, torch.stack([small, large]), ways=2, shots=1, queries=2,
                         tasks_per_batch=3, seed=0)
    assert source.partition_ids == [1]
    assert source.sample().task_id.tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="no partition has ways=2 clusters of at least"):
        CactusTasks(view, small[None], ways=2, shots=1, queries=2)


# ---------------------------------------------------------------- UMTRA


AUGMENT = ImageAugmentation(rotate=10.0, scale=0.1, translate=0.1)


def test_umtra_query_is_an_augmentation_of_its_support_image():
    view = UnlabelledImages.of(IndexedImages())
    source = UmtraTasks(view, ways=5, queries=2, augmentation=AUGMENT, tasks_per_batch=3,
                        seed=4)
    state = source.state_dict()
    batch = source.sample()
    # re-derive by hand from the same generator state: ways distinct images per task, then
    # each support image repeated ``queries`` times and augmented in that order
    generator = torch.Generator()
    generator.set_state(state["generator"])
    picks = torch.stack([torch.randperm(len(view), generator=generator)[:5] for _ in range(3)])
    support = view.images[picks]
    expected = AUGMENT(support.flatten(0, 1).repeat_interleave(2, 0), generator)
    assert torch.equal(batch.support_x, support)
    assert torch.equal(batch.query_x, expected.view(3, 10, 1, 8, 8))
    assert batch.support_y.tolist() == [[0, 1, 2, 3, 4]] * 3
    assert batch.query_y.tolist() == [[0, 0, 1, 1, 2, 2, 3, 3, 4, 4]] * 3
    for t in range(3):
        assert len(set(index_of(batch.support_x[t]).tolist())) == 5
    assert not torch.equal(batch.query_x, batch.support_x.repeat_interleave(2, 1))


def test_umtra_without_augmentation_queries_are_the_same_source_image():
    view = UnlabelledImages.of(IndexedImages())
    batch = UmtraTasks(view, ways=4, queries=3, tasks_per_batch=2, seed=0).sample()
    support_index = index_of(batch.support_x)
    query_index = index_of(batch.query_x)
    assert torch.equal(query_index, support_index.repeat_interleave(3, 1))
    assert torch.equal(batch.query_x, batch.support_x.repeat_interleave(3, 1))


def test_umtra_rejects_more_ways_than_images():
    view = UnlabelledImages.of(IndexedImages(groups=1, per_group=3))
    with pytest.raises(ValueError, match="ways=5 but there are only 3 images"):
        UmtraTasks(view, ways=5)


# ---------------------------------------------------------------- embeddings and spec


def test_pca_embedding_matches_the_top_principal_directions():
    g = torch.Generator().manual_seed(0)
    # variance 9 along e0, 1 along e1, 0.01 along e2
    x = torch.randn(500, 3, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.1])
    z = fit_embedding("pca", x.view(500, 1, 1, 3), dims=2)(x.view(500, 1, 1, 3)).double()
    centred = x - x.mean(0)
    # by hand: the leading eigenvectors of the covariance are (close to) e0 and e1
    u, s, vh = torch.linalg.svd(centred, full_matrices=False)
    reference = centred @ vh[:2].T
    reference = reference * torch.sign(vh[:2].gather(1, vh[:2].abs().argmax(1, True))).T
    assert torch.allclose(z, reference, atol=1e-4)
    assert z[:, 0].var() > z[:, 1].var() > 0.5


def test_autoencoder_embedding_is_a_function_of_its_seed():
    images = IndexedImages().images.float()
    images[:, 0, 0, 0] = 0
    a = fit_embedding("autoencoder", images, dims=4, seed=1, hidden=8, steps=5)(images)
    b = fit_embedding("autoencoder", images, dims=4, seed=1, hidden=8, steps=5)(images)
    c = fit_embedding("autoencoder", images, dims=4, seed=2, hidden=8, steps=5)(images)
    assert a.shape == (72, 4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unsupervised_spec_errors_name_the_key():
    assert parse_unsupervised("umtra").method == "umtra"
    with pytest.raises(ValueError, match=r"method must be one of \['cactus', 'umtra'\]"):
        parse_unsupervised("simclr")
    with pytest.raises(ValueError, match=r"keys \['clusterz'\] are unknown"):
        parse_unsupervised({"method": "cactus", "clusterz": 3})
    with pytest.raises(ValueError, match="embedding must be one of"):
        parse_unsupervised({"method": "cactus", "embedding": "simclr"})
    with pytest.raises(ValueError, match="clusters must be a positive integer"):
        parse_unsupervised({"method": "cactus", "clusters": 0})
    from metalab.train.config import ConfigError, resolve

    wrong = {**UNSUPERVISED["data"], "unsupervised": {"method": "cactus", "dimz": 3}}
    with pytest.raises(ConfigError, match=r"keys \['dimz'\] are unknown"):
        resolve({**UNSUPERVISED, "data": wrong})


# ---------------------------------------------------------------- through the trainer


class LabelTrap(torch.utils.data.Dataset):
    """The first ``size`` images of a training split: they can be gathered, but reading a
    label raises."""

    def __init__(self, dataset, size: int = 400) -> None:
        self._images = dataset.gather(torch.arange(size))
        self.split = dataset.split

    def __len__(self) -> int:
        return len(self._images)

    def gather(self, indices):
        return self._images[indices]

    def __getitem__(self, index):
        raise AssertionError("an item (x, y) of the training split was read")

    def __getattr__(self, name):
        if name in ("labels", "class_info", "class_names", "targets"):
            raise AssertionError(f"the training split's {name} were read")
        raise AttributeError(name)


UNSUPERVISED = {
    "algorithm": {"name": "protonet"},
    "model": {"name": "conv4", "hidden": 8},
    "data": {"name": "glyphs", "ways": 3, "shots": 1, "queries": 2,
             "unsupervised": {"method": "cactus", "embedding": "pca", "dims": 8,
                              "partitions": 2, "clusters": 20, "iterations": 5}},
    "train": {"steps": 2, "meta_batch": 2, "val_every": 2, "val_episodes": 2,
              "checkpoint_every": 2},
    "eval": {"episodes": 2, "batch_size": 2},
}


def trap_training_labels(monkeypatch) -> None:
    """Make every training split the trainer reads a `LabelTrap` (reading a label raises);
    the caches that would hold an untrapped dataset are cleared."""
    from metalab.train import sources

    real = sources._cached_dataset

    def trapped(name, split, root, options_json):
        dataset = real(name, split, root, options_json)
        return LabelTrap(dataset) if split == "train" else dataset

    monkeypatch.setattr(sources, "_cached_dataset", trapped)
    sources._unlabelled.cache_clear()
    sources._cached_partitions.cache_clear()


@pytest.mark.parametrize("method", ["cactus", "umtra"])
def test_meta_training_never_reads_a_training_label(method, tmp_path, monkeypatch):
    from metalab.train import sources
    from metalab.train.config import resolve
    from metalab.train.run import train_run

    trap_training_labels(monkeypatch)
    data = dict(UNSUPERVISED["data"])
    if method == "umtra":
        data["unsupervised"] = {"method": "umtra", "augment": "characters"}
    config = resolve({**UNSUPERVISED, "data": data})
    trainer = train_run(config, tmp_path / "run")
    assert trainer.step == 2
    source = sources.build_task_source(config, "train", 2, seed=0)
    assert isinstance(source.images, UnlabelledImages)
    sources._unlabelled.cache_clear()
    sources._cached_partitions.cache_clear()


def test_validation_and_test_stay_labelled_episodes_and_umtra_refuses_double_augment():
    from metalab.tasks import EpisodeSampler
    from metalab.train.config import resolve
    from metalab.train.sources import build_task_source

    config = resolve(UNSUPERVISED)
    for split in ("val", "test"):
        assert isinstance(build_task_source(config, split, 2, seed=0), EpisodeSampler)
    umtra = {**UNSUPERVISED["data"], "unsupervised": "umtra", "augment": "characters"}
    with pytest.raises(ValueError, match="augment its tasks twice"):
        build_task_source(resolve({**UNSUPERVISED, "data": umtra}), "train", 2, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["cactus-pca-maml-glyphs", "cactus-ae-protonet-glyphs",
                                    "umtra-protonet-glyphs", "cactus-acai-maml-glyphs",
                                    "cactus-bigan-protonet-glyphs",
                                    "cactus-deepcluster-protonet-glyphs"])
def test_shipped_unsupervised_configs_run_end_to_end_through_the_cli(config, tmp_path):
    from metalab.cli.main import main

    run = tmp_path / "run"
    small = ["train.steps=2", "train.meta_batch=2", "model.hidden=8",
             "data.unsupervised.partitions=2", "data.unsupervised.clusters=50",
             "data.unsupervised.iterations=3",
             "data.unsupervised.embedding_options.hidden=16",
             "data.unsupervised.embedding_options.steps=5"]
    if config.startswith("umtra"):
        small = small[:3]
    if "deepcluster" in config:
        small.append("data.unsupervised.embedding_options.rounds=1")
    assert main(["train", config, *small, "--out", str(run)]) == 0
    assert main(["eval", str(run), "--episodes", "4"]) == 0
    assert (run / "eval.json").is_file()
