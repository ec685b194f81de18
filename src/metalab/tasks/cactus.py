"""CACTUs: few-shot tasks whose classes are k-means clusters of an embedding (Hsu, Levine &
Finn, ICLR 2019, "Unsupervised Learning via Meta-Learning").

Partitions: the unlabelled images are embedded, ``z_i = f(x_i)``, and k-means is run
``P`` times, partition ``p`` on the rescaled embedding ``diag(s_p) z_i`` with
``s_p ~ U(0, 1)^D`` per dimension (the paper's random scaling, which makes the partitions
differ in what they treat as similar); each partition assigns every image to exactly one of
its ``k`` clusters.

Tasks: a task draws a partition uniformly, then ``ways`` of its clusters with at least
``shots + queries`` members, then ``shots + queries`` distinct members of each: the first
``shots`` form the support set, the rest the query set. Cluster ``j`` of the task gets label
``j`` (the clusters are drawn in random order, so the label permutation is random). The
batch's ``task_id`` is the partition index. No label of the images is read anywhere: the
source sees only an `UnlabelledImages` view.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metalab.tasks.batch import TaskBatch
from metalab.tasks.kmeans import kmeans
from metalab.tasks.source import TaskSource
from metalab.tasks.unlabelled import UnlabelledImages
from metalab.validation import check_positive_int


def cactus_partitions(features: Tensor, partitions: int, clusters: int, seed: int = 0,
                      scaling: bool = True, iterations: int = 100) -> Tensor:
    """Cluster assignments ``[P, N]`` of ``features [N, D]``: ``P`` seeded k-means runs,
    each on its own random per-dimension rescaling (``scaling=False``: none)."""
    partitions = check_positive_int("partitions", partitions)
    generator = torch.Generator().manual_seed(int(seed))
    rows = []
    for _ in range(partitions):
        scale = (torch.rand(features.shape[1], generator=generator, dtype=features.dtype)
                 if scaling else torch.ones(features.shape[1], dtype=features.dtype))
        rows.append(kmeans(features * scale, clusters, generator, iterations).assignments)
    return torch.stack(rows)


def cluster_members(assignment: Tensor) -> list[Tensor]:
    """The image indices of each cluster of one partition ``[N]``, cluster 0 first."""
    order = torch.argsort(assignment, stable=True)
    return list(torch.split(order, torch.bincount(assignment).tolist()))


class CactusTasks(TaskSource):
    """N-way K-shot tasks from the clusters of ``partitions`` over ``images``.

    Args:
        images: the unlabelled images.
        partitions: ``[P, N]`` cluster index of every image in each partition.
        ways, shots, queries: the task shape; only clusters with ``shots + queries``
            members are used, and a partition with fewer than ``ways`` such clusters is
            never drawn (an error if no partition has enough).
    """

    def __init__(self, images: UnlabelledImages, partitions: Tensor, ways: int, shots: int,
                 queries: int, tasks_per_batch: int = 1, seed: int | None = None) -> None:
        super().__init__(tasks_per_batch, seed)
        if not isinstance(images, UnlabelledImages):
            raise TypeError(f"images must be an UnlabelledImages view, got "
                            f"{type(images).__name__}")
        if partitions.dim() != 2 or partitions.shape[1] != len(images):
            raise ValueError(f"partitions must be [P, {len(images)}] cluster indices, got "
                             f"{tuple(partitions.shape)}")
        self.images = images
        self.ways = check_positive_int("ways", ways)
        self.shots = check_positive_int("shots", shots)
        self.queries = check_positive_int("queries", queries)
        self.clusters = self._eligible_clusters(partitions)

    def _eligible_clusters(self, partitions: Tensor) -> list[list[Tensor]]:
        """Per usable partition, the member indices of its clusters big enough for a task."""
        needed = self.shots + self.queries
        usable, self.partition_ids = [], []
        for index, assignment in enumerate(partitions):
            members = [m for m in cluster_members(assignment) if len(m) >= needed]
            if len(members) >= self.ways:
                usable.append(members)
                self.partition_ids.append(index)
        if not usable:
            raise ValueError(f"no partition has ways={self.ways} clusters of at least "
                             f"shots+queries={needed} images; use fewer clusters, ways or "
                             f"queries")
        return usable

    def _draw_task(self) -> tuple[int, Tensor]:
        """A usable partition's position and the image indices ``[ways, shots + queries]``."""
        position = int(torch.randint(len(self.clusters), (1,), generator=self.generator))
        members = self.clusters[position]
        chosen = torch.randperm(len(members), generator=self.generator)[: self.ways]
        per_cluster = self.shots + self.queries
        rows = [members[c][torch.randperm(len(members[c]), generator=self.generator)
                           [:per_cluster]] for c in chosen.tolist()]
        return position, torch.stack(rows)

    def sample(self) -> TaskBatch:
        drawn = [self._draw_task() for _ in range(self.tasks_per_batch)]
        indices = torch.stack([rows for _, rows in drawn])  # [T, ways, shots + queries]
        x = self.images.gather(indices.reshape(-1))
        x = x.reshape(*indices.shape, *x.shape[1:])
        labels = torch.arange(self.ways).view(1, self.ways, 1).expand_as(indices)

        def flat(t: Tensor) -> Tensor:
            return t.reshape(t.shape[0], -1, *t.shape[3:])

        task_id = torch.tensor([self.partition_ids[p] for p, _ in drawn])
        return TaskBatch(flat(x[:, :, : self.shots]), flat(labels[:, :, : self.shots]).contiguous(),
                         flat(x[:, :, self.shots:]), flat(labels[:, :, self.shots:]).contiguous(),
                         num_classes=self.ways, task_id=task_id)
