"""``metalab plot`` curves: several runs (seeds) as a mean with a Student-t band, against the
meta-iteration or a logged key such as ``env_steps``."""

from __future__ import annotations

import json
import math

import pytest

from metalab.cli.main import main
from metalab.cli.plot import seed_curve

T_975_2 = 4.302652729911275  # Student-t 0.975 quantile, 2 degrees of freedom


def _records(returns, env_per_step=1000):
    return [{"step": 10 * (i + 1), "split": "train", "return": v,
             "env_steps": float(env_per_step * 10 * (i + 1)), "seconds": 0.1 * i}
            for i, v in enumerate(returns)]


def test_seed_curve_is_the_mean_and_t_interval_at_the_shared_steps():
    runs = [_records([1.0, 4.0, 9.0]), _records([2.0, 6.0]), _records([3.0, 8.0, 1.0])]
    xs, means, bands = seed_curve(runs, "return", "train")
    assert xs == [10, 20]  # step 30: not logged by the second run
    assert means == pytest.approx([2.0, 6.0])
    sd = math.sqrt(((4 - 6) ** 2 + 0 + (8 - 6) ** 2) / 2)  # 2.0
    assert bands == pytest.approx([T_975_2 * 1.0 / math.sqrt(3), T_975_2 * sd / math.sqrt(3)])
    xs, _, _ = seed_curve(runs, "return", "train", x="env_steps")
    assert xs == [10000.0, 20000.0]
    assert seed_curve(runs, "return", "val") == ([], [], [])


def _write_run(path, records):
    path.mkdir()
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_cli_draws_seeds_against_environment_steps(tmp_path, capsys):
    runs = [_write_run(tmp_path / f"seed{s}", _records([s, s + 1.0, s + 3.0]))
            for s in range(3)]
    out = tmp_path / "curves.png"
    assert main(["plot", *runs, "--seeds", "--x", "env_steps", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    assert main(["plot", runs[0], "--x", "env_steps"]) == 0  # one run: its own values
    assert (tmp_path / "seed0" / "curves.png").read_bytes().startswith(b"\x89PNG")
    capsys.readouterr()
    assert main(["plot", *runs, "--seeds", "--x", "episodes_seen"]) == 2
    assert "--x 'episodes_seen': no record of the run(s) logs it" in capsys.readouterr().err
    assert main(["plot", *runs, "--seeds", "--metrics", "return", "reward"]) == 2
    assert "--metrics 'reward': no record of the run(s) logs it" in capsys.readouterr().err
    assert main(["plot", *runs]) == 2
    assert "several run directories need --seeds" in capsys.readouterr().err
