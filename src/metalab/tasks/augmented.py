"""Few-shot episodes with rotated/reflected images: learning symmetries from augmented data.

The augmented few-shot protocol of MSR (Zhou, Knowles, Finn, ICLR 2021, sec. 5.2): every
query image is transformed by a random element of a group of image symmetries while the
support set is left as drawn, so a learner that adapts on the support set must classify
transformed versions of the support classes. A meta-learner can then learn the invariance
from the tasks themselves (MSR learns it into its sharing matrices). The usual
alternative, augmentation "baked into" training, transforms support and query images
alike (``augment="both"``); ``augment="none"`` passes episodes through unchanged.

The group acts by exact pixel permutations: the quarter-turn rotations ``C4`` or the
rotations and reflections ``D4`` (the paper also rescales; this source does not).
"""

from __future__ import annotations

import torch
from torch import Tensor

from metalab.tasks.batch import TaskBatch
from metalab.tasks.episodes import EpisodeSampler
from metalab.tasks.source import TaskSource
from metalab.tasks.symmetry import GROUPS, check_group, transform_image
from metalab.validation import check_choice

AUGMENT_MODES = ("query", "both", "none")


class AugmentedEpisodes(TaskSource):
    """Episodes of ``episodes`` with per-image random ``group`` transformations.

    Args:
        episodes: the `EpisodeSampler` drawing the tasks (its batch size is used); images
            must be square, ``[..., H, H]``.
        group: ``"C4"`` or ``"D4"``; each transformed image gets an independent, uniformly
            drawn element (the identity included).
        augment: ``"query"`` (query images only: the MSR protocol), ``"both"`` (support and
            query: training with data augmentation) or ``"none"``.
        seed: seed of the generator drawing the transformations.
    """

    def __init__(self, episodes: EpisodeSampler, group: str = "D4", augment: str = "query",
                 seed: int | None = None) -> None:
        if not isinstance(episodes, EpisodeSampler):
            raise TypeError(f"episodes must be an EpisodeSampler, got {type(episodes).__name__}")
        check_choice("augment", augment, AUGMENT_MODES)
        super().__init__(episodes.tasks_per_batch, seed)
        self.episodes = episodes
        self.group = check_group(group)
        self.augment = augment

    def transform(self, x: Tensor) -> Tensor:
        """Every image of ``x [T, N, ..., H, H]`` moved by its own random group element."""
        if x.dim() < 4 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"AugmentedEpisodes needs square images [T, N, ..., H, H], got "
                             f"{tuple(x.shape)}")
        elements = GROUPS[self.group]
        drawn = torch.randint(len(elements), x.shape[:2], generator=self.generator)
        out = x.clone()
        for index, element in enumerate(elements):
            chosen = drawn == index
            if index and chosen.any():
                out[chosen] = transform_image(x[chosen], element)
        return out

    def sample(self) -> TaskBatch:
        batch = self.episodes.sample()
        support_x = self.transform(batch.support_x) if self.augment == "both" else (
            batch.support_x)
        query_x = batch.query_x if self.augment == "none" else self.transform(batch.query_x)
        return TaskBatch(support_x, batch.support_y, query_x, batch.query_y,
                         num_classes=batch.num_classes, task_id=batch.task_id)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "episodes": self.episodes.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.episodes.load_state_dict(state["episodes"])
