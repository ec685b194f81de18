"""Two processes on gloo end with the parameters of one process with the full meta-batch."""

import os
import subprocess
import sys

import pytest
import torch
import yaml

from metalab import load_run
from metalab.train import load_config, train_run

CONFIG = {
    "algorithm": {"name": "maml", "inner_lr": 0.05, "inner_steps": 2},
    "model": {"name": "mlp", "hidden": [16, 16]},
    "data": {"name": "sinusoid", "shots": 5, "queries": 5},
    "train": {"steps": 5, "meta_batch": 5, "val_every": 0, "checkpoint_every": 2,
              "log_every": 1, "progress": False, "dtype": "float64"},
    "eval": {"episodes": 10},
}


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
@pytest.mark.parametrize("combiner", [None, "pcgrad"])
def test_two_gloo_processes_match_one_process(tmp_path, combiner):
    """With a combiner the processes gather the task gradients (3 and 2 tasks per shard)."""
    config = {**CONFIG, "train": {**CONFIG["train"], "combiner": combiner}}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    single = train_run(load_config(config_path), tmp_path / "single").learner
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--standalone", "-m", "metalab", "train", str(config_path),
               "--out", str(tmp_path / "ddp")]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("trained 5 steps") == 1  # rank 0 alone reports
    parallel = load_run(tmp_path / "ddp")
    for name, value in single.state_dict().items():
        torch.testing.assert_close(parallel.state_dict()[name], value, rtol=0, atol=1e-10)
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5  # one log line per step, written once
