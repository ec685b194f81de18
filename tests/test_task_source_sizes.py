"""`TaskSource.sizes`: the named protocol the config builder reads a model's sizes from."""

import torch

from metalab.tasks.batch import TaskBatch
from metalab.tasks.regression import Sinusoid
from metalab.tasks.source import batch_sizes


def _batch(x_shape, y_shape, num_classes=None):
    y = torch.zeros(1, 2, *y_shape, dtype=torch.long if num_classes else torch.float)
    x = torch.zeros(1, 2, *x_shape)
    return TaskBatch(x, y, x, y, num_classes=num_classes)


def test_images_give_channels_and_size_and_classes_give_outputs():
    assert batch_sizes(_batch((3, 12, 12), (), num_classes=5)) == {
        "in_channels": 3, "image_size": 12, "outputs": 5}


def test_tasks_with_different_classes_give_one_output_size_per_task():
    assert batch_sizes(_batch((7,), (), num_classes=4), [2, 4])["outputs"] == [2, 4]


def test_regression_gives_the_target_size_and_a_map_its_channels():
    assert batch_sizes(_batch((1,), ())) == {"in_features": 1, "outputs": 1}
    assert batch_sizes(_batch((4,), (2,)))["outputs"] == 2
    assert batch_sizes(_batch((1, 8, 8), (3, 8, 8))) == {
        "in_channels": 1, "image_size": 8, "outputs": 3, "out_channels": 3}


def test_a_source_reports_the_sizes_of_its_batches():
    assert Sinusoid(5, 5, tasks_per_batch=2, seed=0).sizes() == {
        "in_features": 1, "outputs": 1}
