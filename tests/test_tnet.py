"""T-Net and MT-Net (Lee & Choi 2018) in float64.

- identity transforms (and an all-ones mask) reduce to MAML adapting the same weights:
  the meta-gradients are equal (the reference is MAML on the unwrapped model);
- the transforms are not changed by the inner loop but get meta-gradients;
- a unit whose mask is 0 keeps its weights (row of W and bias entry) after adaptation;
- the masks are Bernoulli(sigmoid(zeta)) draws (frequency over many draws).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from helpers import classification_batch
from metalab.algorithms import MAML
from metalab.algorithms.tnet import MTNet, TNet
from metalab.nn import Conv4

LR = 0.3


def _conv4() -> nn.Module:
    torch.manual_seed(0)
    return Conv4(hidden=4, image_size=16, out_features=5).double()


def _layer_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _wrapped(name: str) -> str:
    """``body.0.0.weight`` of the plain model is ``body.0.0.layer.weight`` once wrapped."""
    path, leaf = name.rsplit(".", 1)
    return f"{path}.layer.{leaf}"


def _meta_gradients(learner, batch):
    learner.zero_grad()
    learner.meta_loss(batch)[0].backward()
    return {n: p.grad for n, p in learner.named_parameters()}


@pytest.mark.parametrize("method", [TNet, MTNet])
def test_identity_transforms_and_full_masks_reduce_to_maml(method):
    model = _conv4()
    layers = _layer_names(model)
    maml = MAML(copy.deepcopy(model), inner_lr=LR, inner_steps=2,
                adapt=layers)
    options = {"mask_init_logit": 40.0} if method is MTNet else {}
    learner = method(model, inner_lr=LR, inner_steps=2, **options)
    batch = classification_batch(tasks=2, size=16)
    expected, got = _meta_gradients(maml, batch), _meta_gradients(learner, batch)
    adapted_names = {_wrapped(f"{layer}.{leaf}") for layer in layers for leaf in ("weight",
                                                                                  "bias")}
    assert set(learner.adapt_names) == adapted_names
    for name, grad in expected.items():
        adapted = _wrapped(name).removeprefix("model.") in adapted_names
        wrapped = _wrapped(name) if adapted else name
        torch.testing.assert_close(got[wrapped], grad, rtol=1e-10, atol=1e-12)


def test_transforms_are_fixed_in_the_inner_loop_and_get_meta_gradients():
    learner = TNet(_conv4(), inner_lr=LR, inner_steps=2)
    batch = classification_batch(tasks=2, size=16)
    params = dict(learner.model.named_parameters())
    adapted = learner.adapt_task(batch.support_x[0], batch.support_y[0], training=True)
    transforms = [n for n in params if n.endswith("transform.weight")]
    assert len(transforms) == 5
    for name in transforms:
        assert adapted[name] is params[name]
    assert not torch.equal(adapted["head.layer.weight"], params["head.layer.weight"])
    grads = _meta_gradients(learner, batch)
    for name in transforms:
        assert grads["model." + name].abs().sum() > 0


def _mtnet_with_unit_off(unit: int, *layers: str) -> MTNet:
    learner = MTNet(_conv4(), inner_lr=LR, inner_steps=3)
    with torch.no_grad():
        for logits in learner.masks.logits.values():
            logits.fill_(40.0)
        for layer in layers:
            learner.masks.logits[layer.replace(".", "__")][unit] = -40.0
    return learner


@pytest.mark.parametrize("training", [True, False])
def test_a_masked_unit_keeps_its_weights(training):
    # a conv bias before batch norm has a zero gradient, so the biases are checked on the head
    learner = _mtnet_with_unit_off(2, "body.1.0", "head").train(training)
    batch = classification_batch(tasks=1, size=16)
    params = dict(learner.model.named_parameters())
    adapted = learner.adapt_task(batch.support_x[0], batch.support_y[0], training=training)
    for name, units in (("body.1.0.layer.weight", 4), ("head.layer.weight", 5),
                        ("head.layer.bias", 5), ("body.1.0.layer.bias", 4)):
        torch.testing.assert_close(adapted[name][2], params[name][2].detach(), rtol=0, atol=0)
        if name != "body.1.0.layer.bias":
            others = [u for u in range(units) if u != 2]
            change = (adapted[name][others] - params[name][others]).abs()
            assert change.reshape(len(others), -1).amax(dim=1).min() > 1e-6
    change = (adapted["body.0.0.layer.weight"] - params["body.0.0.layer.weight"]).abs()
    assert change.amax(dim=(1, 2, 3)).min() > 0


def test_masks_are_bernoulli_draws_of_the_sigmoid_of_their_logits():
    learner = MTNet(_conv4(), mask_init_logit=0.0)
    masks = learner.masks
    with torch.no_grad():
        masks.logits["head"].copy_(torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0]))
    torch.manual_seed(0)
    draws = torch.stack([masks.sample(masks.logits["head"]).detach() for _ in range(4000)])
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    expected = torch.tensor([1 / (1 + math.exp(-z)) for z in (-2.0, -1.0, 0.0, 1.0, 2.0)])
    torch.testing.assert_close(draws.mean(0), expected, rtol=0, atol=0.03)
    masks.eval()
    assert masks.sample(masks.logits["head"]).tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]


def test_mask_logits_get_meta_gradients():
    torch.manual_seed(1)
    learner = MTNet(_conv4(), inner_lr=LR, inner_steps=1)
    grads = _meta_gradients(learner, classification_batch(tasks=2, size=16))
    for key in learner.masks.logits:
        assert grads[f"update_rule.rules.0.logits.{key}"].abs().sum() > 0


def test_adapt_is_not_an_option_of_tnet():
    with pytest.raises(ValueError, match="algorithm.adapt must be left out"):
        TNet(_conv4(), adapt=["head"])
