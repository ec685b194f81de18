"""Gradient checkpointing across inner steps gives the same meta-gradient."""

import pytest
import torch

from helpers import classification_batch
from metalab.algorithms import MAML, MetaSGD
from metalab.nn import Conv4
from metalab.profiling import peak_allocated_bytes


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


def _peak_allocated_mib(learner, batch) -> float:
    """Peak of bytes allocated and not yet freed during one meta-loss + backward."""
    return peak_allocated_bytes(lambda: learner.meta_loss(batch)[0].backward()) / 2**20


def test_ten_checkpointed_steps_peak_within_twice_one_step():
    batch = classification_batch(tasks=1, ways=5, shots=5, queries=5, size=16)

    def peak(steps, checkpoint_steps):
        torch.manual_seed(0)
        model = Conv4(hidden=8, image_size=16).double()
        return _peak_allocated_mib(MAML(model, inner_steps=steps,
                                        checkpoint_steps=checkpoint_steps), batch)

    one, ten, ten_checkpointed = peak(1, False), peak(10, False), peak(10, True)
    assert ten > 4 * one  # without checkpointing memory grows with the steps
    assert ten_checkpointed <= 2 * one, (one, ten_checkpointed)
