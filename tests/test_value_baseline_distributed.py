"""The learned value baseline under ``torchrun``: two gloo processes holding different
episodes (different tasks, lengths and masks) fit one network, the one a single process
gets on their concatenation, weights and Adam state identical on both; an eval-mode fit
(meta-test, which rank 0 runs alone) stays local; and a MAML-RL nav2d run with
``baseline: mlp`` ends with the same value network on both ranks, the trainer's AdamW
leaving it alone (its ``.grad`` stays ``None`` through the trainer's all-reduce).

The processes run this file: ``python -m torch.distributed.run --nproc_per_node=2 THIS
{fits,train} OUT [CONFIG]``; each writes what it ends with to ``OUT/rank<r>.pt``.
"""

import copy
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import yaml

from metalab.rl import ValueFunctionBaseline, linear_features

HIDDEN, STEPS, LR, FITS = (8,), 5, 0.05, 3


def baseline():
    torch.manual_seed(0)
    return ValueFunctionBaseline(2, HIDDEN, STEPS, LR).double()


def episodes(rank, fit):
    """Rank ``r``'s episodes of fit ``k``: ``[2 + r, 3, 5, 2]`` observations, returns on
    a scale of their own, each episode of a random length (the rest masked, with returns
    of 1000 there that must not count)."""
    generator = torch.Generator().manual_seed(100 * fit + rank)
    tasks = 2 + rank
    observations = torch.rand(tasks, 3, 5, 2, generator=generator, dtype=torch.float64) * 2 - 1
    returns = (1 + 2 * rank) * torch.randn(tasks, 3, 5, generator=generator,
                                           dtype=torch.float64) + 3 * rank
    lengths = torch.randint(1, 6, (tasks, 3, 1), generator=generator)
    masks = (torch.arange(5) < lengths).double()
    return observations, torch.where(masks > 0, returns, 1000.0), masks


def fits_worker(out):
    """Both ranks: ``FITS`` training-mode fits on their own episodes; rank 0 alone then an
    eval-mode fit (a collective there would time out, as rank 1 never joins it)."""
    torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = torch.distributed.get_rank()
    fitted = baseline()
    values = [fitted(*episodes(rank, fit)) for fit in range(FITS)]
    result = {"state": fitted.state_dict(), "values": values[-1]}
    if rank == 0:
        local = copy.deepcopy(fitted).eval()
        result["eval_values"] = local(*episodes(0, FITS))
        result["eval_state"] = local.state_dict()
    torch.save(result, out / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def train_worker(out, config_path):
    from metalab.train import load_config, train_run
    from metalab.train.distributed import process_group

    with process_group() as distributed:
        trainer = train_run(load_config(config_path), out / "run")
        rank = torch.distributed.get_rank()
    value_baseline = trainer.learner.value_baseline
    skipped = all(p not in trainer.optimizer.state for p in value_baseline.parameters())
    torch.save({"state": value_baseline.state_dict(), "trainer_optimizer_skipped": skipped,
                "distributed": distributed,
                "destroyed": not torch.distributed.is_initialized()}, out / f"rank{rank}.pt")


def torchrun(tmp_path, *arguments):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--standalone", __file__, *arguments]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def assert_same_state(a, b):
    """Weights and Adam state (moments and step counts) bit-identical."""
    assert a.keys() == b.keys()
    for name in a:
        if name.endswith("_extra_state"):
            adam_a, adam_b = a[name]["optimizer"]["state"], b[name]["optimizer"]["state"]
            assert adam_a.keys() == adam_b.keys() and adam_a
            for index, moments in adam_a.items():
                for key, value in moments.items():
                    assert torch.equal(value, adam_b[index][key]), (index, key)
        else:
            assert torch.equal(a[name], b[name]), name


def standardized(rows):
    mean, std = rows.mean(0), rows.std(0, unbiased=False).clamp_min(1e-8)
    return (rows - mean) / std, mean, std


def one_process_on_both_ranks_episodes():
    """The reference, written out: one network, one Adam, each fit ``STEPS`` steps on the
    mean squared error over the valid steps of both ranks' episodes concatenated, inputs
    and targets standardised over those steps."""
    network = baseline().network
    adam = torch.optim.Adam(network.parameters(), lr=LR)
    for fit in range(FITS):
        observations, returns, masks = (torch.cat(parts) for parts in zip(
            episodes(0, fit), episodes(1, fit), strict=True))
        features, valid = linear_features(observations), masks > 0
        x, x_mean, x_std = standardized(features[valid])
        y, y_mean, y_std = standardized(returns[valid])
        for _ in range(STEPS):
            adam.zero_grad()
            (network(x).squeeze(-1) - y).pow(2).mean().backward()
            adam.step()
    with torch.no_grad():
        values = (network((features - x_mean) / x_std).squeeze(-1) * y_std + y_mean) * masks
    return network, adam, values


@pytest.mark.slow  # two processes importing torch: 12 s measured on the busy 2-core machine
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_two_processes_fit_one_network_on_all_their_episodes(tmp_path):
    rank0, rank1 = torchrun(tmp_path, "fits", str(tmp_path))
    assert_same_state(rank0["state"], rank1["state"])
    network, adam, values = one_process_on_both_ranks_episodes()
    for name, value in network.state_dict().items():
        torch.testing.assert_close(rank0["state"][f"network.{name}"], value, rtol=0,
                                   atol=1e-12)
    moments = rank0["state"]["_extra_state"]["optimizer"]["state"]
    for index, reference in adam.state_dict()["state"].items():
        for key, value in reference.items():
            torch.testing.assert_close(moments[index][key], value, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.cat([rank0["values"], rank1["values"]]), values,
                               rtol=0, atol=1e-12)
    # rank 0's eval-mode fit alone: a plain local fit from the synchronised network
    local = baseline()
    local.load_state_dict(rank0["state"])
    torch.testing.assert_close(local(*episodes(0, FITS)), rank0["eval_values"], rtol=0,
                               atol=0)
    assert_same_state(local.state_dict(), rank0["eval_state"])


@pytest.mark.slow  # two processes training 3 MAML-RL steps: 13.5 s measured
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_a_torchrun_maml_rl_run_ends_with_one_value_network(tmp_path):
    from metalab.cli.main import resolve_config_path
    from metalab.train import load_config

    config = load_config(resolve_config_path("maml-rl-nav2d"), [
        "algorithm.outer_step=gradient", "algorithm.inner_lr=0.05", "model.hidden=[8]",
        "data.episodes=2", "data.horizon=6", "train.meta_batch=3", "train.steps=3",
        "train.optimizer=adamw", "train.lr=0.01", "train.val_every=2",
        "train.val_episodes=2", "train.checkpoint_every=3", "train.progress=false",
        "train.dtype=float64", "algorithm.baseline=mlp", "algorithm.baseline_hidden=[8]",
        "algorithm.baseline_steps=5"])
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    rank0, rank1 = torchrun(tmp_path, "train", str(tmp_path), str(config_path))
    assert_same_state(rank0["state"], rank1["state"])
    assert rank0["trainer_optimizer_skipped"] and rank1["trainer_optimizer_skipped"]
    # the group `process_group` joined is destroyed on leaving it, not at interpreter exit
    assert all(rank["distributed"] and rank["destroyed"] for rank in (rank0, rank1))
    steps = {m["step"].item() for m in rank0["state"]["_extra_state"]["optimizer"]["state"]
             .values()}
    assert steps == {3 * 2 * 5}  # 3 meta-steps of 2 fits (pre, post), none at validation


if __name__ == "__main__":
    if sys.argv[1] == "fits":
        fits_worker(Path(sys.argv[2]))
    else:
        train_worker(Path(sys.argv[2]), Path(sys.argv[3]))
