"""The trainer with a gradient combiner: the same update as a per-task reference, float64."""

import dataclasses
import json

import pytest
import torch
from torch import nn

from metalab.algorithms import MAML
from metalab.combiners import build_combiner
from metalab.nn import MLP
from metalab.tasks import Sinusoid
from metalab.train import Trainer
from metalab.train.combined_step import CombinedStep, task_gradients


def _learner(seed=0, inner_steps=1):
    torch.manual_seed(seed)
    model = MLP(in_features=1, hidden=[8, 8], out_features=1).double()
    return MAML(model, inner_lr=0.05, inner_steps=inner_steps, loss="mse")


def _source(seed=3, tasks=4):
    return Sinusoid(shots=5, queries=5, tasks_per_batch=tasks, seed=seed)


def _train(tmp_path, name, steps=3, **kwargs):
    learner = _learner()
    trainer = Trainer(learner, _source(), tmp_path / name, steps=steps, lr=1e-2,
                      dtype=torch.float64, progress=False, log_every=1, **kwargs)
    trainer.fit()
    return learner


def _same(a, b, atol=1e-12):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=atol, msg=name)


def _reference_rows(learner, batch):
    """Per-task gradients by one independent backward pass per task."""
    params = [p for p in learner.parameters() if p.requires_grad]
    rows = []
    for t in range(len(batch)):
        loss = learner.meta_loss(batch[t: t + 1])[0]
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


def test_task_gradients_equal_one_backward_pass_per_task():
    learner = _learner(inner_steps=2)
    batch = _source().sample().to(torch.float64)
    params = [p for p in learner.parameters() if p.requires_grad]
    for chunk in (None, 1, 3):
        rows = task_gradients(learner, batch, params, chunk)
        torch.testing.assert_close(rows.grads, _reference_rows(learner, batch), rtol=0,
                                   atol=1e-12)


@pytest.mark.parametrize("options", [{"task_chunk": 2}, {"diagnostics": True}, {}])
def test_mean_combiner_reproduces_the_plain_trainer(tmp_path, options):
    plain = _train(tmp_path, "plain", task_chunk=options.get("task_chunk"))
    combined = _train(tmp_path, "mean", combiner=build_combiner("mean"), **options)
    _same(plain, combined)


def test_pcgrad_update_is_pcgrad_of_the_per_task_gradients():
    learner = _learner()
    batch = _source().sample().to(torch.float64)
    reference = build_combiner("pcgrad", seed=7)
    expected = reference.combine(_reference_rows(learner, batch), torch.zeros(len(batch)), None)
    step = CombinedStep(learner, build_combiner("pcgrad", seed=7))
    step.backward(batch)
    got = torch.cat([p.grad.reshape(-1) for p in step.parameters])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(1, 4)
        self.heads = nn.ModuleList([nn.Linear(4, 1), nn.Linear(4, 1)])

    def forward(self, x):
        return self.heads[0](torch.tanh(self.trunk(x))) + self.heads[1](torch.tanh(self.trunk(x)))


class SharedTrunkMAML(MAML):
    def shared_parameter_names(self):
        return [n for n, _ in self.named_parameters() if n.startswith("model.trunk")]


def test_shared_parameters_are_combined_and_the_rest_averaged():
    torch.manual_seed(0)
    learner = SharedTrunkMAML(TwoHeads().double(), inner_lr=0.05, loss="mse")
    batch = _source().sample().to(torch.float64)
    rows = _reference_rows(learner, batch)
    combiner = build_combiner("pcgrad", seed=1)
    step = CombinedStep(learner, build_combiner("pcgrad", seed=1), combine_params="shared")
    step.backward(batch)
    names = [n for n, p in learner.named_parameters()]
    trunk = [i for i, n in enumerate(names) if n.startswith("model.trunk")]
    sizes = [p.numel() for p in learner.parameters()]
    columns = torch.arange(sum(sizes)).split(sizes)
    trunk_columns = torch.cat([columns[i] for i in trunk])
    head_columns = torch.cat([columns[i] for i in range(len(names)) if i not in trunk])
    expected_trunk = combiner.combine(rows[:, trunk_columns], torch.zeros(len(batch)), None)
    got = dict(learner.named_parameters())
    torch.testing.assert_close(torch.cat([got[names[i]].grad.reshape(-1) for i in trunk]),
                               expected_trunk, rtol=0, atol=1e-12)
    heads = [n for i, n in enumerate(names) if i not in trunk]
    torch.testing.assert_close(torch.cat([got[n].grad.reshape(-1) for n in heads]),
                               rows[:, head_columns].mean(0), rtol=0, atol=1e-12)


def test_loss_weighting_equals_weighted_per_task_gradients():
    learner = _learner()
    batch = _source().sample().to(torch.float64)
    batch = dataclasses.replace(batch, task_id=torch.tensor([0, 1, 1, 2]))
    rows = _reference_rows(learner, batch)
    direct = CombinedStep(learner, build_combiner("group_dro", num_groups=3, step_size=0.5))
    direct.backward(batch)
    got = torch.cat([p.grad.reshape(-1) for p in direct.parameters])
    via_rows = CombinedStep(learner, build_combiner("group_dro", num_groups=3, step_size=0.5),
                            task_chunk=1)
    via_rows.backward(batch)
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in via_rows.parameters]),
                               got, rtol=0, atol=1e-12)
    assert not torch.allclose(got, rows.mean(0))  # DRO weights differ from the mean


def test_diagnostics_curvature_is_exact_on_a_quadratic(tmp_path):
    """Linear model + MSE, no inner step: the loss is quadratic, the estimate exact."""
    torch.manual_seed(0)
    model = nn.Linear(1, 1).double()
    learner = MAML(model, inner_lr=0.1, inner_steps=0, loss="mse")
    source = _source(tasks=3)
    batch = Sinusoid(shots=5, queries=5, tasks_per_batch=3, seed=3).sample().to(torch.float64)
    trainer = Trainer(learner, source, tmp_path / "run", steps=1, lr=0.1, optimizer="sgd",
                      dtype=torch.float64, progress=False, log_every=1, diagnostics=True)
    before = [p.detach().clone() for p in learner.parameters()]
    trainer.fit()
    update = torch.cat([(p.detach() - b).reshape(-1)
                        for p, b in zip(learner.parameters(), before, strict=True)])
    flat = torch.cat([b.reshape(-1) for b in before])

    def loss(vector):
        weight, bias = vector[:1].view(1, 1), vector[1:]
        outputs = batch.query_x @ weight.T + bias
        return ((outputs - batch.query_y) ** 2).mean()

    hessian = torch.autograd.functional.hessian(loss, flat)
    expected = (update @ hessian @ update / (update @ update)).item()
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["diag/curvature"] == pytest.approx(expected, rel=1e-8)
    assert 0.0 <= record["diag/fraction_conflicting"] <= 1.0


def test_resume_with_a_stateful_combiner_matches_uninterrupted(tmp_path):
    whole = _train(tmp_path, "whole", steps=4, combiner=build_combiner("pcgrad", seed=2))
    learner = _learner()
    kwargs = dict(lr=1e-2, dtype=torch.float64, progress=False, checkpoint_every=2)
    Trainer(learner, _source(), tmp_path / "part", steps=2,
            combiner=build_combiner("pcgrad", seed=2), **kwargs).fit()
    resumed = _learner(seed=99)
    Trainer(resumed, _source(), tmp_path / "part", steps=4,
            combiner=build_combiner("pcgrad", seed=2), **kwargs).fit(resume=True)
    _same(whole, resumed)


def test_bad_combine_params_is_rejected():
    with pytest.raises(ValueError, match="combine_params"):
        CombinedStep(_learner(), build_combiner("mean"), combine_params="heads")


class WeightDecayMAML(MAML):
    """A learner with a meta-regularizer: ``0.3 * |theta|^2``, once per meta-batch."""

    def regularizer(self):
        return 0.3 * sum((p**2).sum() for p in self.parameters())

    def regularizer_metrics(self):
        return {"penalty": self.regularizer().item()}


def _regularized(seed=0):
    torch.manual_seed(seed)
    model = MLP(in_features=1, hidden=[8, 8], out_features=1).double()
    return WeightDecayMAML(model, inner_lr=0.05, loss="mse")


@pytest.mark.parametrize("options", [{"task_chunk": 2}, {"diagnostics": True}, {}])
def test_regularizer_is_added_once_whichever_path(tmp_path, options):
    def run(name, **kwargs):
        learner = _regularized()
        Trainer(learner, _source(), tmp_path / name, steps=3, lr=1e-2, dtype=torch.float64,
                progress=False, log_every=1, **kwargs).fit()
        return learner

    plain = run("plain", task_chunk=options.get("task_chunk"))
    combined = run("mean", combiner=build_combiner("mean"), **options)
    _same(plain, combined)
    records = [json.loads(line) for line in (tmp_path / "mean" / "metrics.jsonl").open()]
    train = [r for r in records if r.get("split", "train") == "train" and "penalty" in r]
    assert train and all(r["loss"] > r["query_loss"] for r in train)


def test_pcgrad_combines_the_tasks_and_adds_the_regularizer_gradient():
    learner = _regularized()
    batch = _source().sample().to(torch.float64)
    params = list(learner.parameters())
    rows = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        learner.training_losses(batch[t: t + 1])[0].sum(), params)]) for t in range(len(batch))])
    penalty = torch.cat([g.reshape(-1) for g in torch.autograd.grad(learner.regularizer(),
                                                                      params)])
    expected = build_combiner("pcgrad", seed=2).combine(rows, torch.zeros(len(batch)), None)
    step = CombinedStep(learner, build_combiner("pcgrad", seed=2))
    metrics = step.backward(batch)
    got = torch.cat([p.grad.reshape(-1) for p in step.parameters])
    torch.testing.assert_close(got, expected + penalty, rtol=0, atol=1e-12)
    assert metrics["loss"] == pytest.approx(metrics["query_loss"] + metrics["penalty"])
