"""Method facts live on the method classes: generic code never names a method."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from metalab.algorithms import ALGORITHMS, MetaLearner
from metalab.train.build import complete_model_config
from metalab.train.config import resolve

TRAIN = {"steps": 1, "meta_batch": 1}

GENERIC = Path(__file__).resolve().parents[1] / "src" / "metalab" / "train"


def _names_in(path: Path) -> set[str]:
    """String constants and identifiers of a module (docstrings included); the names an
    import binds (``import numpy as np``) are not words of the module's own."""
    tree = ast.parse(path.read_text())
    imported = {alias.asname or alias.name.split(".")[0] for n in ast.walk(tree)
                if isinstance(n, (ast.Import, ast.ImportFrom)) for alias in n.names}
    found = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
             and isinstance(n.value, str)}
    found |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - imported
    found |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    words = set()
    for text in found:
        words |= set(re.findall(r"[A-Za-z][\w-]*", text))
    return words


@pytest.mark.parametrize("path", sorted(GENERIC.glob("*.py")), ids=lambda p: p.name)
def test_no_method_name_in_train(path):
    methods = set(ALGORITHMS) | {cls.__name__ for cls in ALGORITHMS.values()}
    assert not _names_in(path) & methods, f"{path.name} names a method"


def test_the_planted_check_catches_a_method_name(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text('if algorithm["name"] == "arm-cml":\n    pass\n')
    assert "arm-cml" in _names_in(planted)


def test_an_import_alias_is_not_a_method_name(tmp_path):
    module = tmp_path / "uses_numpy.py"
    module.write_text('import numpy as np\n\nx = np.zeros(1)\n')
    assert "np" not in _names_in(module)
    module.write_text('import numpy as np\n\nif name == "np":\n    x = np.zeros(1)\n')
    assert "np" in _names_in(module)


def test_facts_are_class_attributes_the_builder_reads():
    assert ALGORITHMS["protonet"].model_role == "embedding"
    assert ALGORITHMS["matching"].model_role == "embedding"
    assert ALGORITHMS["maml"].model_role == "predictor"
    assert {n for n, c in ALGORITHMS.items() if c.chooses_adapted_parameters} == {
        "maml", "fomaml", "metasgd", "anil", "mr-maml-w", "mr-maml-a", "metacurvature",
        "platipus"}
    assert {n for n, c in ALGORITHMS.items() if not c.adapts_to_support} == {"erm", "multitask"}
    assert ALGORITHMS["arm-cml"].extra_input_channels({"context_channels": 5}) == 5
    assert ALGORITHMS["arm-cml"].extra_input_channels({}) == 12
    assert all(issubclass(c, MetaLearner) for c in ALGORITHMS.values())


def test_builder_completes_sizes_from_the_facts():
    embedding = complete_model_config(resolve({
        "algorithm": {"name": "protonet"}, "model": {"name": "conv4", "image_size": 28},
        "data": {"name": "glyphs", "ways": 5, "shots": 1, "queries": 1}, "train": TRAIN,
        "eval": {"episodes": 1}}))
    assert embedding["model"]["out_features"] is None
    context = complete_model_config(resolve({
        "algorithm": {"name": "arm-cml", "context_channels": 3},
        "model": {"name": "arm-convnet", "image_size": 14, "num_classes": 10},
        "data": {"name": "rotated-digits", "image_size": 14, "digit_size": 10,
                 "support_size": 4}, "train": TRAIN, "eval": {"episodes": 1}}))
    assert context["model"]["in_channels"] == 1 + 3
    assert context["algorithm"]["image_channels"] == 1


def test_arm_ll_takes_inner_steps_at_meta_test():
    """``adapt(x, inner_steps=0)`` is the meta-learned model itself (with the batch's
    statistics); the default takes the configured steps and changes the outputs."""
    import torch

    from metalab.algorithms import ARMLL
    from metalab.nn.arm import ARMConvNet

    torch.manual_seed(0)
    model = ARMConvNet(norm="task", num_classes=3, hidden=4, fc_hidden=6, kernel_size=3,
                       image_size=8, padding="same").double()
    learner = ARMLL(model, inner_lr=0.5, inner_steps=2).double()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        unadapted = model(x)
    torch.testing.assert_close(learner.adapt(x, inner_steps=0)(x), unadapted)
    assert not torch.allclose(learner.adapt(x)(x), unadapted)


@pytest.mark.parametrize("name", ["protonet", "matching"])
def test_a_metric_learner_on_a_regression_batch_names_itself(name):
    import torch
    from torch import nn

    from metalab.tasks import TaskBatch

    x, y = torch.randn(2, 3, 4), torch.randn(2, 3, 1)
    learner = ALGORITHMS[name](nn.Flatten())
    with pytest.raises(ValueError, match=f"{ALGORITHMS[name].__name__} needs a classification"):
        learner.task_losses(TaskBatch(x, y, x, y))
