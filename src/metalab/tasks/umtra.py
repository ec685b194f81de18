"""UMTRA: every unlabelled image is its own class, its queries are augmented copies
(Khodadadeh, Bölöni & Shah, NeurIPS 2019, "Unsupervised Meta-Learning for Few-Shot Image
Classification").

A task draws ``ways`` distinct images ``x_1 .. x_N`` uniformly from the unlabelled set; the
support set is ``{(x_j, j)}`` (one shot each) and the query set holds ``queries``
augmentations per image, ``{(A(x_j), j)}``, each drawn independently by the augmentation
``A`` (`metalab.tasks.image_augmentation`). With ``N`` much smaller than the number of
images, the drawn images are almost always of different true classes, which is the bet
UMTRA makes. ``augmentation=None`` gives queries equal to their support image (an ablation:
the tasks are then trivially solved by matching pixels).
"""

from __future__ import annotations

import torch

from metalab.tasks.batch import TaskBatch
from metalab.tasks.image_augmentation import ImageAugmentation
from metalab.tasks.source import TaskSource
from metalab.tasks.unlabelled import UnlabelledImages
from metalab.validation import check_positive_int


class UmtraTasks(TaskSource):
    """N-way 1-shot tasks of distinct unlabelled images, queries augmented (module doc)."""

    def __init__(self, images: UnlabelledImages, ways: int, queries: int = 1,
                 augmentation: ImageAugmentation | None = None, tasks_per_batch: int = 1,
                 seed: int | None = None) -> None:
        super().__init__(tasks_per_batch, seed)
        if not isinstance(images, UnlabelledImages):
            raise TypeError(f"images must be an UnlabelledImages view, got "
                            f"{type(images).__name__}")
        if augmentation is not None and not isinstance(augmentation, ImageAugmentation):
            raise TypeError(f"augmentation must be an ImageAugmentation or None, got "
                            f"{type(augmentation).__name__}")
        self.images = images
        self.ways = check_positive_int("ways", ways)
        self.queries = check_positive_int("queries", queries)
        if self.ways > len(images):
            raise ValueError(f"ways={ways} but there are only {len(images)} images")
        self.augmentation = augmentation

    def sample(self) -> TaskBatch:
        tasks, ways = self.tasks_per_batch, self.ways
        indices = torch.stack([torch.randperm(len(self.images), generator=self.generator)[:ways]
                               for _ in range(tasks)])  # [T, ways]
        support_x = self.images.gather(indices.reshape(-1))
        query_x = support_x.repeat_interleave(self.queries, dim=0)  # image j's copies together
        if self.augmentation is not None:
            query_x = self.augmentation(query_x, self.generator)
        shape = support_x.shape[1:]
        labels = torch.arange(ways)
        return TaskBatch(support_x.reshape(tasks, ways, *shape),
                         labels.expand(tasks, ways).contiguous(),
                         query_x.reshape(tasks, ways * self.queries, *shape),
                         labels.repeat_interleave(self.queries).expand(tasks, -1).contiguous(),
                         num_classes=ways)
