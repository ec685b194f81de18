"""Where tasks come from: task batches and the task sources that draw them."""

from metalab.tasks.augmented import AugmentedEpisodes
from metalab.tasks.batch import Task, TaskBatch
from metalab.tasks.completion import GlyphsCompletion, ImageCompletion
from metalab.tasks.episodes import EpisodeSampler, gather_inputs, indices_by_class
from metalab.tasks.gaussian_process import GaussianProcess
from metalab.tasks.groups import GroupBatchSampler, GroupEvalSampler
from metalab.tasks.image_augmentation import AugmentedTasks, ImageAugmentation
from metalab.tasks.labelled_batches import LabelledBatches
from metalab.tasks.memorization import GlyphPose, NonMutuallyExclusiveSinusoid
from metalab.tasks.multitask import (
    MultiLabelSource,
    PartitionedTaskSource,
    partition_by_info,
    split_per_class,
)
from metalab.tasks.optimization_problems import ClassifierTrainingProblems, RandomQuadratics
from metalab.tasks.regression import SineOrLine, Sinusoid
from metalab.tasks.source import TaskSource
from metalab.tasks.stream import BufferSource, StreamTask, TaskStream
from metalab.tasks.symmetry import RotationEquivariantTasks, TranslationEquivariantTasks

__all__ = [
    "AugmentedEpisodes",
    "BufferSource",
    "ClassifierTrainingProblems",
    "AugmentedTasks",
    "EpisodeSampler",
    "GaussianProcess",
    "GlyphsCompletion",
    "GlyphPose",
    "GroupBatchSampler",
    "GroupEvalSampler",
    "ImageCompletion",
    "ImageAugmentation",
    "LabelledBatches",
    "MultiLabelSource",
    "NonMutuallyExclusiveSinusoid",
    "PartitionedTaskSource",
    "RandomQuadratics",
    "RotationEquivariantTasks",
    "SineOrLine",
    "Sinusoid",
    "StreamTask",
    "Task",
    "TaskBatch",
    "TaskSource",
    "TaskStream",
    "TranslationEquivariantTasks",
    "gather_inputs",
    "indices_by_class",
    "partition_by_info",
    "split_per_class",
]
