"""Where tasks come from: task batches and the task sources that draw them."""

from metalab.tasks.batch import Task, TaskBatch
from metalab.tasks.episodes import EpisodeSampler
from metalab.tasks.groups import GroupBatchSampler, GroupEvalSampler
from metalab.tasks.regression import Sinusoid
from metalab.tasks.source import TaskSource

__all__ = ["EpisodeSampler", "GroupBatchSampler", "GroupEvalSampler", "Sinusoid", "Task",
           "TaskBatch", "TaskSource"]
