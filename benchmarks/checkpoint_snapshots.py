"""Keep a copy of a training run's checkpoint every ``--every`` steps, for scoring later.

A run keeps one ``checkpoint.pt`` (overwritten at every ``train.checkpoint_every``); this
watcher copies it, with the run's ``config.yaml``, to ``<RUN>-snapshots/step<N>/`` when its
step is a multiple of ``--every``, so each copy is a run directory that
`benchmarks/platipus_ambiguous.py` (``--runs <RUN>-snapshots --names step<N>``) and
``metalab`` can load. It polls every ``--poll`` seconds until killed.

    python benchmarks/checkpoint_snapshots.py /tmp/platipus-long/0 --every 500
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import torch


def snapshot(run: Path, out: Path, every: int) -> int | None:
    """Copy ``run``'s checkpoint to ``out/step<N>`` when ``N`` is a new multiple of
    ``every``; the step copied, or None."""
    out.mkdir(exist_ok=True)
    tmp = out / "tmp.pt"
    shutil.copy2(run / "checkpoint.pt", tmp)
    step = torch.load(tmp, map_location="cpu", weights_only=False)["step"]
    target = out / f"step{step}"
    if step % every or target.exists():
        return None
    target.mkdir()
    shutil.copy2(run / "config.yaml", target)
    os.replace(tmp, target / "checkpoint.pt")
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--poll", type=float, default=20.0)
    args = parser.parse_args()
    if args.every < 1:
        parser.error(f"--every must be a positive number of steps, got {args.every}")
    out = Path(f"{args.run}-snapshots")
    seen = None
    while True:
        checkpoint = args.run / "checkpoint.pt"
        if checkpoint.is_file() and checkpoint.stat().st_mtime != seen:
            seen = checkpoint.stat().st_mtime
            time.sleep(2)  # let an atomic write finish renaming
            step = snapshot(args.run, out, args.every)
            if step is not None:
                print(f"saved step {step}", flush=True)
        time.sleep(args.poll)


if __name__ == "__main__":
    main()
