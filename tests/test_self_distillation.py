"""RFS's self-distillation: a student trained against a frozen teacher run's soft labels.

The reference for the loss is written out with exp, log and sums in float64:
``(1 - a) CE + a T^2 mean_i sum_k p_t,k (log p_t,k - log p_s,k)`` with ``p = softmax(./T)``.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from metalab.algorithms import ProtoNet
from metalab.algorithms.pretrained import PretrainedEmbedding
from metalab.cli.main import main
from metalab.nn import MLP
from metalab.tasks import TaskBatch
from metalab.train.run import load_run


def learner(seed: int, classes: int = 4, **options) -> PretrainedEmbedding:
    torch.manual_seed(seed)
    return PretrainedEmbedding(MLP(5, (8,), None), num_classes=classes, **options).double()


def labelled_batch(n: int = 6, classes: int = 4) -> TaskBatch:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, n, 5, generator=g, dtype=torch.float64)
    y = torch.arange(n).remainder(classes).view(1, n)
    return TaskBatch(x[:, :0], y[:, :0], x, y, num_classes=classes)


def log_softmax_by_hand(z: torch.Tensor) -> torch.Tensor:
    return z - torch.log(torch.exp(z).sum(1, keepdim=True))


def expected_loss(student, teacher, batch, weight, temperature) -> torch.Tensor:
    x, y = batch.query_x[0], batch.query_y[0]
    s = student.classify(student.embed(x))
    t = teacher.classify(teacher.embed(x))
    cross_entropy = -log_softmax_by_hand(s)[torch.arange(len(y)), y].mean()
    log_p_t = log_softmax_by_hand(t / temperature)
    log_p_s = log_softmax_by_hand(s / temperature)
    kl = (torch.exp(log_p_t) * (log_p_t - log_p_s)).sum(1)
    return (1 - weight) * cross_entropy + weight * temperature ** 2 * kl.mean()


def test_the_distilled_loss_is_the_weighted_sum_of_cross_entropy_and_tempered_kl():
    student = learner(0, distill_from="teacher-run", distill_weight=0.3,
                      distill_temperature=4.0)
    teacher = learner(1)
    student.attach_teacher(teacher)
    batch = labelled_batch()
    losses, metrics = student.task_losses(batch)
    torch.testing.assert_close(losses[0], expected_loss(student, teacher, batch, 0.3, 4.0),
                               rtol=1e-12, atol=1e-12)
    # the metric stays the accuracy on the hard labels
    x, y = batch.query_x[0], batch.query_y[0]
    hits = (student.classify(student.embed(x)).argmax(1) == y).double().mean()
    torch.testing.assert_close(metrics["accuracy"][0], hits)


def test_the_teacher_is_frozen_and_is_not_part_of_the_student():
    student = learner(0, distill_from="teacher-run")
    teacher = learner(1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student.attach_teacher(teacher)
    student.task_losses(labelled_batch())[0].sum().backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert set(student.state_dict()) == set(before)  # no teacher entries in checkpoints
    assert sum(1 for _ in student.parameters()) == sum(1 for _ in teacher.parameters())
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_a_teacher_identical_to_the_student_leaves_only_the_weighted_cross_entropy():
    student = learner(0, distill_from="teacher-run", distill_weight=0.25)
    plain = learner(0)
    student.attach_teacher(learner(0))  # the same initial weights
    batch = labelled_batch()
    torch.testing.assert_close(student.task_losses(batch)[0],
                               0.75 * plain.task_losses(batch)[0], rtol=1e-12, atol=1e-12)


def test_bad_teachers_and_options_are_clear_errors():
    with pytest.raises(ValueError, match="6 training classes; this learner 4"):
        learner(0, distill_from="run").attach_teacher(learner(1, classes=6))
    with pytest.raises(ValueError, match="must be a run of the pretrained method"):
        learner(0, distill_from="run").attach_teacher(ProtoNet(MLP(5, (8,), 3)))
    with pytest.raises(ValueError, match="no teacher is attached"):
        learner(0, distill_from="run").task_losses(labelled_batch())
    with pytest.raises(ValueError, match=r"distill_weight must be in \[0, 1\]"):
        learner(0, distill_weight=1.5)
    with pytest.raises(ValueError, match="distill_temperature must be a finite number > 0"):
        learner(0, distill_temperature=0.0)
    with pytest.raises(ValueError, match="distill_from must be the directory"):
        learner(0, distill_from=3)


TINY = ["train.steps=4", "model.hidden=8", "data.train_batch_size=16", "data.queries=2",
        "train.val_every=0", "train.progress=false", "train.checkpoint_every=2",
        "train.log_every=2"]


def test_a_born_again_student_trains_from_a_teacher_run_and_is_evaluated_without_it(
        tmp_path, capsys, monkeypatch):
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    assert main(["train", "rfs-glyphs-5w1s", *TINY, "--out", str(teacher)]) == 0
    assert main(["train", "rfs-distill-glyphs-5w1s", *TINY,
                 f"algorithm.distill_from={teacher}", "--out", str(student)]) == 0
    trained = load_run(student)
    assert trained.distill_from == str(teacher) and trained.teacher is None
    # at weight 0 the student is the plain run of its seed, bit for bit (the shipped config
    # is its teacher's recipe plus distillation); at 0.5 the soft labels move it
    plain, unweighted = tmp_path / "plain", tmp_path / "unweighted"
    assert main(["train", "rfs-glyphs-5w1s", *TINY, "--out", str(plain)]) == 0
    assert main(["train", "rfs-distill-glyphs-5w1s", *TINY,
                 f"algorithm.distill_from={teacher}", "algorithm.distill_weight=0.0",
                 "--out", str(unweighted)]) == 0
    reference = load_run(plain).state_dict()
    for name, value in load_run(unweighted).state_dict().items():
        assert torch.equal(value, reference[name]), name
    assert any(not torch.equal(value, reference[name])
               for name, value in trained.state_dict().items())
    shutil.rmtree(teacher)
    assert main(["eval", str(student), "--episodes", "3"]) == 0
    assert json.loads((student / "eval.json").read_text())["episodes"] == 3
    assert main(["train", "--resume", str(student), "train.steps=6"]) != 0
    assert "algorithm.distill_from: the teacher run cannot be loaded" in capsys.readouterr().err
    # the shipped config's own teacher path (runs/rfs-glyphs-5w1s), before that run exists
    monkeypatch.chdir(tmp_path)
    assert main(["train", "rfs-distill-glyphs-5w1s", *TINY, "--out", "x"]) != 0
    assert "'runs/rfs-glyphs-5w1s' is not a metalab run" in capsys.readouterr().err


def test_the_benchmark_reuses_the_grid_cell_as_its_teacher_and_trains_a_student(tmp_path):
    import argparse

    from helpers import load_benchmark

    ft = load_benchmark("fewshot_table")
    sd = load_benchmark("self_distillation")
    budget = ft.Budget(steps=2, meta_batch=1, episodes=2)
    runs = tmp_path / "runs"
    cells = ft.grid(["RFS"], ["glyphs"], ["5w1s"], [0], ["conv4"], ["off"])
    [record] = ft.fill(cells, budget, tmp_path / "results", runs, reuse=True)
    args = argparse.Namespace(dataset="glyphs", setting="5w1s", backbone="conv4",
                              augment="off", omniglot_root=None, runs=runs, budget=budget)
    assert (sd.run_dir(args, 0, 0) / "eval.json").is_file()  # the grid's run, reused
    assert sd.accuracy_of(args, 0, 0) == pytest.approx(100 * record["accuracy"])
    student = sd.run_dir(args, 1, 0)
    sd.accuracy_of(args, 1, 0)
    assert load_run(student).distill_from == str(sd.run_dir(args, 0, 0))
    assert json.loads((student / "eval.json").read_text())["episodes"] == 2
    assert "| born-again 1 | 80.0 ± 0.0 (80.0) | +10.0 ± 0.0 |" in sd.table({0: [70.0],
                                                                           1: [80.0]})
