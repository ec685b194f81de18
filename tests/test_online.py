"""Online meta-learning through the one Trainer: the stream metrics by hand, FTML's update
as a hand-written MAML step, what each baseline changes, the hook's clock, the config's
protocol facts, and whole-run resume through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalab.algorithms.maml import MAML
from metalab.cli.main import main
from metalab.tasks.stream import BufferSource, StreamTask, TaskStream
from metalab.train.checkpoint import load_checkpoint
from metalab.train.config import ConfigError, OnlineConfig, load_config
from metalab.train.online import (
    StreamEvaluation,
    accuracy_at,
    complete_online_config,
    cumulative_loss,
    examples_to_threshold,
    summarise_stream,
    updates_to_threshold,
)
from metalab.train.trainer import Trainer

ALPHA, BETA = 0.3, 0.1


# -- metrics by hand --------------------------------------------------------------------------
def test_examples_updates_and_accuracy_at_by_hand():
    examples, accuracy = [10, 20, 30, 40], [0.5, 0.85, 0.92, 0.88]
    assert examples_to_threshold(examples, accuracy, 0.9) == 30
    assert examples_to_threshold(examples, accuracy, 0.85) == 20  # reaching counts (>=)
    assert examples_to_threshold(examples, accuracy, 0.95) is None
    # updates counted from the task's first evaluation: 107 - 100
    assert updates_to_threshold([100, 102, 107, 110], accuracy, 0.9) == 7
    assert updates_to_threshold([100, 102, 107, 110], accuracy, 0.5) == 0
    assert updates_to_threshold([100, 102, 107, 110], accuracy, 0.95) is None
    assert accuracy_at(examples, accuracy, 25) == 0.92
    assert accuracy_at(examples, accuracy, 41) is None
    assert cumulative_loss([2.0, 1.5, 0.25]) == [2.0, 3.5, 3.75]


def test_summarise_stream_on_a_made_up_curve():
    # task 0: three evaluations, reaches 0.6 at its 2nd (20 examples, 5 updates later);
    # task 1: two evaluations, never reaches it
    rows = [(0, 10, 3, 0.2, 2.0), (0, 20, 8, 0.6, 1.0), (0, 30, 13, 0.7, 0.6),
            (1, 10, 13, 0.4, 1.4), (1, 20, 18, 0.5, 1.2)]
    records = [{"task": t, "examples": e, "updates": u, "accuracy": a, "loss": loss}
               for t, e, u, a, loss in rows]
    summary = summarise_stream(records, threshold=0.6, budget=15)
    first, second = summary["tasks"]
    assert first["examples_to_threshold"] == 20 and first["updates_to_threshold"] == 5
    assert second["examples_to_threshold"] is None and second["updates_to_threshold"] is None
    assert first["accuracy_at_budget"] == 0.6 and second["accuracy_at_budget"] == 0.5
    assert first["final_accuracy"] == 0.7 and first["examples"] == 30
    assert math.isclose(first["loss"], (2.0 + 1.0 + 0.6) / 3)
    assert math.isclose(second["loss"], 1.3)
    assert summary["cumulative_loss"] == pytest.approx([1.2, 2.5])


# -- the protocols through the trainer -------------------------------------------------------
def one_task(seed: int = 0, size: int = 8) -> list[StreamTask]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 4, generator=g, dtype=torch.float64)
    y = torch.randint(3, (size,), generator=g)
    return [StreamTask(x, y, x[:4].clone(), y[:4].clone())]


def linear_learner(**options) -> tuple[MAML, torch.Tensor, torch.Tensor]:
    model = nn.Linear(4, 3).double()
    with torch.no_grad():
        g = torch.Generator().manual_seed(7)
        model.weight.copy_(torch.randn(3, 4, generator=g, dtype=torch.float64))
        model.bias.copy_(torch.randn(3, generator=g, dtype=torch.float64))
    learner = MAML(model, inner_lr=ALPHA, **options)
    return learner, model.weight.detach().clone(), model.bias.detach().clone()


def online_trainer(tmp_path, tasks, protocol: str, inner_steps: int, batch_size: int,
                   updates: int, eval_inner_steps: int | None = None, support=3, query=3):
    learner, w0, b0 = linear_learner(inner_steps=inner_steps)
    stream = TaskStream(tasks, batch_size=batch_size, seed=3, num_classes=3)
    source = BufferSource(stream, 1, support, query)
    online = OnlineConfig(protocol=protocol, updates_per_batch=updates, support=support,
                          query=query, eval_inner_steps=eval_inner_steps)
    steps = stream.arrivals() * updates
    trainer = Trainer(learner, source, tmp_path, steps=steps, optimizer="sgd", lr=BETA,
                      val_every=0, progress=False, hooks=[StreamEvaluation(source, online)])
    return trainer, w0, b0


def buffer_draw_after_one_batch():
    """The same draws from an independent copy of the stream: one batch, one buffer draw."""
    twin = TaskStream(one_task(), batch_size=8, seed=3, num_classes=3)
    twin.advance()
    return twin.sample_buffer(1, 3, 3)


def hand_maml_step(w, b, batch):
    """theta' = theta - alpha grad L_s(theta); theta <- theta - beta grad_theta L_q(theta')."""
    w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    sx, sy, qx, qy = batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0]
    support_loss = F.cross_entropy(sx @ w.T + b, sy)
    gw, gb = torch.autograd.grad(support_loss, (w, b), create_graph=True)
    w1, b1 = w - ALPHA * gw, b - ALPHA * gb
    query_loss = F.cross_entropy(qx @ w1.T + b1, qy)
    mw, mb = torch.autograd.grad(query_loss, (w, b))
    return (w - BETA * mw).detach(), (b - BETA * mb).detach()


def test_ftml_update_on_a_one_task_buffer_is_a_hand_written_maml_step(tmp_path):
    trainer, w0, b0 = online_trainer(tmp_path, one_task(), "ftml", 1, batch_size=8, updates=1)
    trainer.fit()
    expected_w, expected_b = hand_maml_step(w0, b0, buffer_draw_after_one_batch())
    assert not torch.allclose(expected_w, w0)
    assert torch.allclose(trainer.learner.model.weight, expected_w, atol=1e-12)
    assert torch.allclose(trainer.learner.model.bias, expected_b, atol=1e-12)


def test_ftl_update_is_joint_training_on_the_query_without_adaptation(tmp_path):
    trainer, w0, b0 = online_trainer(tmp_path, one_task(), "ftl", 0, batch_size=8, updates=1)
    trainer.fit()
    batch = buffer_draw_after_one_batch()
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    loss = F.cross_entropy(batch.query_x[0] @ w.T + b, batch.query_y[0])
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert torch.allclose(trainer.learner.model.weight, w0 - BETA * gw, atol=1e-12)
    assert torch.allclose(trainer.learner.model.bias, b0 - BETA * gb, atol=1e-12)


def stream_records(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "stream"]


def test_scratch_never_updates_and_is_scored_after_adapting(tmp_path):
    tasks = one_task(size=8) * 2
    trainer, w0, b0 = online_trainer(tmp_path, tasks, "scratch", 0, batch_size=4, updates=2,
                                     eval_inner_steps=3)
    trainer.fit()
    assert torch.equal(trainer.learner.model.weight.detach(), w0) and trainer.updates == 0
    # the last record: task 1 with all 8 examples, adapted 3 plain steps from theta_0
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    x, y = tasks[1].train_x, tasks[1].train_y
    for _ in range(3):
        gw, gb = torch.autograd.grad(F.cross_entropy(x @ w.T + b, y), (w, b))
        w, b = (w - ALPHA * gw).detach().requires_grad_(True), (b - ALPHA * gb).detach()
        b.requires_grad_(True)
    logits = (tasks[1].test_x @ w.T + b).detach()
    last = stream_records(tmp_path)[-1]
    assert last["task"] == 1 and last["examples"] == 8
    assert math.isclose(last["loss"], float(F.cross_entropy(logits, tasks[1].test_y)),
                        rel_tol=1e-9)
    expected = float((logits.argmax(-1) == tasks[1].test_y).double().mean())
    assert math.isclose(last["accuracy"], expected)


def test_toe_is_scored_without_adaptation(tmp_path):
    trainer, w0, b0 = online_trainer(tmp_path, one_task(), "toe", 0, batch_size=4, updates=1,
                                     eval_inner_steps=0)
    trainer.fit()
    first = stream_records(tmp_path)[0]  # scored at step 0, before any update
    task = one_task()[0]
    loss = F.cross_entropy(task.test_x @ w0.T + b0, task.test_y)
    assert math.isclose(first["loss"], float(loss), rel_tol=1e-9)


def test_the_clock_batches_arrive_every_u_steps_and_updates_wait_for_the_buffer(tmp_path):
    # 2 tasks x 8 examples in batches of 3 -> 3 arrivals each (3, 6, 8); 2 updates per
    # arrival; support + query = 4 needs the second batch of task 0
    trainer, _, _ = online_trainer(tmp_path, one_task(size=8) * 2, "ftml", 1, batch_size=3,
                                   updates=2, support=2, query=2)
    trainer.fit()
    records = stream_records(tmp_path)
    assert [r["step"] for r in records] == [0, 2, 4, 6, 8, 10]
    assert [(r["task"], r["examples"]) for r in records] == [
        (0, 3), (0, 6), (0, 8), (1, 3), (1, 6), (1, 8)]
    assert [r["updates"] for r in records] == [0, 0, 2, 4, 6, 8]  # steps 0-1 wait
    assert trainer.updates == 10 and trainer.step == 12
    summary = json.loads((tmp_path / "stream.json").read_text())
    assert [t["task"] for t in summary["tasks"]] == [0, 1]


def test_a_trainer_interrupted_mid_stream_resumes_bit_identically(tmp_path, monkeypatch):
    tasks = one_task(size=8) * 3
    whole, _, _ = online_trainer(tmp_path / "whole", tasks, "ftml", 1, batch_size=3,
                                 updates=2, support=2, query=2)
    whole.fit()
    part, _, _ = online_trainer(tmp_path / "part", tasks, "ftml", 1, batch_size=3,
                                updates=2, support=2, query=2)
    part.config = part.config.model_copy(update={"checkpoint_every": 5})
    original, calls = Trainer.train_step, {"n": 0}

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 8:  # step 9 of 18 (steps 0-1 wait for the buffer), in task 1
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        part.fit()
    state = load_checkpoint(tmp_path / "part")
    assert state["step"] == 5 and state["source"]["task_index"] == 0  # resumes from here
    monkeypatch.setattr(Trainer, "train_step", original)
    resumed, _, _ = online_trainer(tmp_path / "part", tasks, "ftml", 1, batch_size=3,
                                   updates=2, support=2, query=2)
    resumed.fit(resume=True)
    assert torch.equal(resumed.learner.model.weight, whole.learner.model.weight)
    assert torch.equal(resumed.learner.model.bias, whole.learner.model.bias)
    assert resumed.updates == whole.updates
    assert stream_records(tmp_path / "part") == stream_records(tmp_path / "whole")


def test_resuming_before_the_first_checkpoint_restarts_without_duplicate_records(tmp_path,
                                                                                  monkeypatch):
    tasks = one_task(size=8)
    whole, _, _ = online_trainer(tmp_path / "whole", tasks, "ftml", 1, batch_size=3,
                                 updates=2, support=2, query=2)
    whole.fit()
    part, _, _ = online_trainer(tmp_path / "part", tasks, "ftml", 1, batch_size=3,
                                updates=2, support=2, query=2)
    original = Trainer.train_step

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        part.fit()  # interrupted at its first update, after the step-0..2 records
    assert len(stream_records(tmp_path / "part")) == 2
    monkeypatch.setattr(Trainer, "train_step", original)
    resumed, _, _ = online_trainer(tmp_path / "part", tasks, "ftml", 1, batch_size=3,
                                   updates=2, support=2, query=2)
    resumed.fit(resume=True)
    assert stream_records(tmp_path / "part") == stream_records(tmp_path / "whole")
    assert torch.equal(resumed.learner.model.weight, whole.learner.model.weight)


# -- the config -----------------------------------------------------------------------------
SMALL = ["data.tasks=3", "data.train_per_task=20", "data.test_per_task=10",
         "online.updates_per_batch=2", "train.steps=12", "train.checkpoint_every=3",
         "train.progress=false", "model.hidden=[8]"]


def test_protocol_facts_are_written_into_the_config():
    ftl = complete_online_config(load_config("src/metalab/configs/ftl-rainbow-digits.yaml",
                                             SMALL))
    assert ftl["algorithm"]["inner_steps"] == 0
    toe = complete_online_config(load_config("src/metalab/configs/toe-rainbow-digits.yaml",
                                             SMALL))
    assert toe["algorithm"]["inner_steps"] == 0 and toe["online"]["eval_inner_steps"] == 0
    ftml = complete_online_config(load_config("src/metalab/configs/ftml-rainbow-digits.yaml",
                                              SMALL))
    assert ftml["algorithm"]["inner_steps"] == 1


@pytest.mark.parametrize("override, message", [
    ("algorithm.inner_steps=2", "inner_steps"),
    ("train.val_every=5", "val_every"),
    ("online.protocol=sgd", "online.protocol"),
])
def test_bad_online_configs_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        complete_online_config(load_config("src/metalab/configs/ftl-rainbow-digits.yaml",
                                           [*SMALL, override]))


def test_steps_that_do_not_fit_the_stream_are_named(tmp_path):
    assert main(["train", "ftl-rainbow-digits", "--out", str(tmp_path / "r"), *SMALL,
                 "train.steps=13"]) == 2


# -- whole-run resume through the CLI ---------------------------------------------------------
@pytest.mark.slow
def test_an_interrupted_online_run_resumes_bit_identically(tmp_path, monkeypatch, capsys):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["train", "ftml-rainbow-digits", "--out", str(whole), *SMALL]) == 0
    original = Trainer.train_step
    calls = {"n": 0}

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 6:  # mid-stream: task 1 of 3, after the checkpoint at step 6
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    assert main(["train", "ftml-rainbow-digits", "--out", str(part), *SMALL]) == 130
    state = load_checkpoint(part)
    assert 0 < state["step"] < 12 and state["source"]["task_index"] == 1
    monkeypatch.setattr(Trainer, "train_step", original)
    assert main(["train", "--resume", str(part)]) == 0

    a, b = load_checkpoint(whole), load_checkpoint(part)
    for name, value in a["learner"].items():
        assert torch.equal(value, b["learner"][name]), name
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for key, moments in a["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(value, b["optimizer"]["state"][key][name])
    assert a["source"]["task_index"] == b["source"]["task_index"] == 2
    assert all(torch.equal(x, y) for x, y in zip(a["source"]["orders"],
                                                  b["source"]["orders"], strict=True))
    assert torch.equal(a["source"]["generator"], b["source"]["generator"])
    assert stream_records(whole) == stream_records(part)
    assert (whole / "stream.json").read_text() == (part / "stream.json").read_text()
    assert main(["plot", "--stream", str(whole), str(part), "--out",
                 str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0


@pytest.mark.slow
def test_train_seeds_runs_an_online_config_per_seed(tmp_path, capsys):
    out = tmp_path / "seeds"
    assert main(["train", "toe-rainbow-digits", "--seeds", "0,1", "--out", str(out),
                 *SMALL]) == 0
    assert "metalab plot --stream" in capsys.readouterr().out
    first, second = (json.loads((out / f"seed{s}" / "stream.json").read_text())
                     for s in (0, 1))
    assert len(first["tasks"]) == len(second["tasks"]) == 3
    assert first != second  # another seed: another stream and initialisation
