"""Gradient checkpointing across inner steps gives the same meta-gradient."""

import pytest
import torch

from helpers import classification_batch
from metalab.algorithms import MAML, MetaSGD
from metalab.nn import Conv4


@pytest.mark.parametrize("cls", [MAML, MetaSGD])
def test_checkpointed_inner_loop_gives_the_same_meta_gradient(cls):
    batch = classification_batch(tasks=2, ways=5, shots=2, queries=3)
    grads = []
    for checkpoint_steps in (False, True):
        torch.manual_seed(0)
        learner = cls(Conv4(hidden=6, image_size=16).double(), inner_steps=4,
                      checkpoint_steps=checkpoint_steps)
        learner.meta_loss(batch)[0].backward()
        grads.append(torch.cat([p.grad.flatten() for p in learner.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-12)


def test_checkpointing_needs_the_loop_strategy():
    with pytest.raises(ValueError, match="checkpoint_steps=True needs strategy='loop'"):
        MAML(Conv4(hidden=4, image_size=16), strategy="vmap", checkpoint_steps=True)
