"""Pretrained-embedding baselines: Baseline, Baseline++ and RFS heads, pretraining through
the one trainer, and support heads on any embedding."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from helpers import interrupted_then_resumed
from metalab.algorithms import ProtoNet
from metalab.algorithms.pretrained import PretrainedEmbedding, with_support_head
from metalab.algorithms.support_heads import (
    cosine_scores,
    fit_cosine,
    fit_logistic,
    logistic_scores,
)
from metalab.cli.main import main, resolve_config_path
from metalab.nn import MLP
from metalab.tasks import TaskBatch
from metalab.train.build import complete_model_config
from metalab.train.config import apply_overrides, load_config, resolve


def clustered(ways=4, shots=3, dim=6, seed=0, spread=0.1):
    """Features around ``ways`` random class directions (linearly separable)."""
    g = torch.Generator().manual_seed(seed)
    centers = 3 * torch.randn(ways, dim, generator=g, dtype=torch.float64)
    labels = torch.arange(ways).repeat(shots)
    noise = spread * torch.randn(len(labels), dim, generator=g, dtype=torch.float64)
    return centers[labels] + noise, labels


def test_baseline_pp_cosine_head_is_invariant_to_the_scale_of_the_features():
    features, labels = clustered()
    queries, _ = clustered(seed=1)
    fitted = fit_cosine(features, labels, 4, scale=10.0)
    for c in (0.01, 7.0):
        rescaled = fit_cosine(c * features, labels, 4, scale=10.0)
        torch.testing.assert_close(cosine_scores(rescaled, c * queries),
                                   cosine_scores(fitted, queries), rtol=1e-9, atol=1e-9)
    # ... and it classifies by direction: 10 * cos, bounded by the scale
    assert cosine_scores(fitted, queries).abs().max() <= 10.0 + 1e-9


def test_the_method_with_a_cosine_head_predicts_the_same_for_a_rescaled_embedding():
    torch.manual_seed(0)
    embedding = MLP(5, (8,), 6).double()
    scaled = MLP(5, (8,), 6).double()
    scaled.load_state_dict(embedding.state_dict())
    with torch.no_grad():  # the last layer times 3: every feature vector times 3
        scaled.head.weight.mul_(3)
        scaled.head.bias.mul_(3)
    x = torch.randn(8, 5, dtype=torch.float64)
    y = torch.arange(4).repeat(2)
    queries = torch.randn(6, 5, dtype=torch.float64)
    outputs = [PretrainedEmbedding(model, test_head="cosine").adapt(x, y)(queries)
               for model in (embedding, scaled)]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-8, atol=1e-8)


def test_logistic_head_separates_a_linearly_separable_support_at_its_optimum():
    features, labels = clustered(ways=5, shots=2, dim=8)
    head = fit_logistic(features, labels, 5, c=1.0)
    assert torch.equal(logistic_scores(head, features).argmax(1), labels)
    # optimality of scikit-learn's objective 1/2 ||W||^2 + C sum_i CE_i, written out:
    # dW = W + C sum_i (p_i - e_{y_i}) u_i^T with u_i = f_i / ||f_i||; db = C sum_i (p_i - e_y)
    u = features / features.norm(dim=1, keepdim=True)
    p = torch.softmax(u @ head["weight"].T + head["bias"], dim=1)
    residual = p - F.one_hot(labels, 5).double()
    torch.testing.assert_close(head["weight"] + residual.T @ u,
                               torch.zeros_like(head["weight"]), rtol=0, atol=1e-5)
    torch.testing.assert_close(residual.sum(0), torch.zeros(5, dtype=torch.float64),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("head", ["linear", "cosine", "logistic", "prototypes", "finetune"])
def test_every_head_is_fit_on_the_support_only(head):
    torch.manual_seed(0)
    learner = PretrainedEmbedding(MLP(6, (16,), None).double(), num_classes=3, test_head=head,
                                  finetune_steps=20)
    features, labels = clustered(ways=3, shots=2, dim=6, spread=0.05)
    predictor = learner.adapt(features, labels)
    # the support is classified correctly (the head was fit to it) ...
    assert torch.equal(predictor(features).argmax(1), labels)
    # ... a query's prediction does not depend on the other queries ...
    queries, _ = clustered(ways=3, shots=4, dim=6, seed=3)
    torch.testing.assert_close(predictor(queries)[:2], predictor(queries[:2]))
    # ... nor on the training classifier, which meta-test drops
    with torch.no_grad():
        learner.classifier.weight.normal_()
    torch.testing.assert_close(learner.adapt(features, labels)(queries), predictor(queries))


def test_any_embedding_takes_a_support_head_and_prototypes_reproduce_protonet():
    torch.manual_seed(0)
    protonet = ProtoNet(MLP(6, (16,), 8).double())
    support, labels = clustered(ways=3, shots=2, dim=6)
    queries, _ = clustered(ways=3, shots=3, dim=6, seed=2)
    expected = protonet.adapt(support, labels)(queries)
    learner = with_support_head(protonet, "prototypes")
    assert learner.model is protonet.model
    torch.testing.assert_close(learner.adapt(support, labels)(queries), expected)
    assert learner.adapt(support, labels, head="logistic")(support).argmax(1).equal(labels)
    with pytest.raises(ValueError, match="head must be one of"):
        with_support_head(protonet, "svm")


def test_pretraining_rejects_episodes():
    learner = PretrainedEmbedding(MLP(4, (8,), None), num_classes=3)
    batch = TaskBatch(torch.randn(1, 3, 4), torch.arange(3).view(1, 3), torch.randn(1, 3, 4),
                      torch.arange(3).view(1, 3), num_classes=3)
    with pytest.raises(ValueError, match="set data.train_batch_size"):
        learner.task_losses(batch)


TINY = ["train.steps=6", "model.hidden=8", "data.train_batch_size=16", "data.queries=2",
        "train.val_every=3", "train.val_episodes=4", "train.progress=false",
        "train.checkpoint_every=2", "train.log_every=2"]


def test_the_config_completes_the_training_classes_from_the_data():
    config = complete_model_config(load_config(resolve_config_path("baseline-pp-glyphs-5w1s")))
    assert config["algorithm"]["num_classes"] == 954  # every glyph training character
    assert config["model"]["out_features"] is None


@pytest.mark.parametrize("config", ["baseline-pp-glyphs-5w1s", "rfs-glyphs-5w1s"])
def test_baseline_configs_pretrain_then_evaluate_with_a_support_head(config, tmp_path):
    run = tmp_path / config
    assert main(["train", config, *TINY, "--out", str(run)]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r["split"] == "val" for r in records)
    assert main(["eval", str(run), "--episodes", "4", "--head", "prototypes"]) == 0
    assert json.loads((run / "eval-head-prototypes.json").read_text())["head"] == "prototypes"


def test_interrupted_augmented_pretraining_resumes_bit_identically(tmp_path):
    config = resolve(apply_overrides(
        load_config(resolve_config_path("baseline-pp-glyphs-5w1s")),
        [*TINY, "train.val_every=0"]))
    straight, resumed = interrupted_then_resumed(config, tmp_path, interrupt_at=4)
    for name, value in straight.learner.state_dict().items():
        assert torch.equal(resumed.learner.state_dict()[name], value), name


def test_a_protonet_run_is_evaluated_with_the_logistic_head(tmp_path):
    run = tmp_path / "protonet"
    assert main(["train", "protonet-glyphs-5w1s", "train.steps=1", "train.meta_batch=1",
                 "model.hidden=8", "data.queries=1", "train.val_every=0",
                 "train.progress=false", "--out", str(run)]) == 0
    assert main(["eval", str(run), "--episodes", "4", "--head", "logistic", "--ways", "3"]) == 0
    result = json.loads((run / "eval-head-logistic-ways3.json").read_text())
    assert result["head"] == "logistic" and result["ways"] == 3
