"""`keep_freed_memory`: freed blocks are reused without faulting pages in again, the trainer
sets it unless told not to, and it changes no number."""

import subprocess
import sys
import textwrap

import pytest
import torch

from metalab.train import Trainer, allocator

# In a fresh process: the minor page faults of allocating and writing a 64 MiB tensor again
# after freeing one, with glibc's defaults, then after keep_freed_memory(). Transparent huge
# pages are off for the process, so a faulted block costs one fault per 4 KiB page.
REFAULTS = textwrap.dedent("""
    import ctypes, resource, torch
    from metalab.train.allocator import keep_freed_memory

    ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE

    def refaults():
        x = torch.ones(16 << 20); del x
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.ones(16 << 20); del x
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    default = min(refaults() for _ in range(2))
    print(default, keep_freed_memory(), min(refaults() for _ in range(3)))
""")


@pytest.mark.skipif(allocator._libc() is None, reason="needs glibc's mallopt (Linux)")
def test_freed_memory_is_reused_without_page_faults():
    out = subprocess.run([sys.executable, "-c", REFAULTS], capture_output=True, text=True,
                         check=True).stdout.split()
    default, applied, kept = int(out[0]), out[1] == "True", int(out[2])
    pages = (64 << 20) // 4096
    assert applied
    assert default > pages // 2  # glibc unmaps the block: every page faults in again
    assert kept < pages // 100   # a wrong mallopt parameter or value leaves the faults


def _fit(tmp_path, name, **options):
    from metalab.algorithms import MAML
    from metalab.nn import MLP
    from metalab.tasks import Sinusoid

    torch.manual_seed(0)
    learner = MAML(MLP(1, (8,), 1).double(), inner_lr=0.05, loss="mse")
    source = Sinusoid(shots=5, queries=5, tasks_per_batch=3, seed=1)
    return Trainer(learner, source, tmp_path / name, steps=2, progress=False,
                   dtype="float64", **options).fit()


def test_trainer_keeps_freed_memory_only_when_told_to(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("metalab.train.trainer.keep_freed_memory", lambda: calls.append(1))
    plain = _fit(tmp_path, "plain")
    assert calls == []
    kept = _fit(tmp_path, "kept", keep_freed_memory=True)
    assert calls == [1]
    for (name, a), b in zip(kept.state_dict().items(), plain.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
