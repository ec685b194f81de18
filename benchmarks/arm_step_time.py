"""CPU seconds per training step of ERM/UW/DRO/ARM-BN/ARM-CML/ARM-LL at the ARM paper's
rotated-MNIST scale (28x28 images, the 128-channel ARM ConvNet with its 200-unit layer,
6 groups x 50 images per step, Adam 1e-4; ARM-CML's 64-channel context network with 12
output channels), to size a paper-scale run before starting it.

Each method's trainer (the shipped ``<method>-rotated-mnist`` config with
`group_shift.method_config`'s overrides) takes one warm-up step, then ``--steps`` timed
steps. CPU time (``time.process_time``) is reported beside wall time: on a shared machine
the wall time is the CPU time divided by this process's share of a core.

    OMP_NUM_THREADS=1 python benchmarks/arm_step_time.py --steps 2 \\
        --methods ERM ARM-BN ARM-CML:task ARM-LL --data-root ../shared/data/mnist

``METHOD:NORM`` sets ``model.norm`` (ARM-CML:batch, ARM-CML:task).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from group_shift import Settings, method_config  # noqa: E402

from metalab.train.build import complete_model_config  # noqa: E402
from metalab.train.run import make_trainer  # noqa: E402
from metalab.train.seeds import with_seed  # noqa: E402

PAPER = Settings(steps=1, seeds=(0,), groups_per_batch=6, support_size=50, lr=1e-4,
                 image_size=28, hidden=128, fc_hidden=200, context_hidden=64)


def step_seconds(method: str, steps: int, data_root: str) -> tuple[float, float]:
    """(CPU, wall) seconds per training step of ``method`` (``NAME`` or ``NAME:NORM``)."""
    name, _, norm = method.partition(":")
    settings = Settings(**{**PAPER.__dict__, "data_root": data_root,
                           "overrides": (f"model.norm={norm}",) if norm else ()})
    config = complete_model_config(with_seed(method_config(name, "rotated-mnist", settings), 0))
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = make_trainer(config, run_dir)
        trainer.train_step()  # warm-up
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        return (time.process_time() - cpu) / steps, (time.perf_counter() - wall) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=["ERM", "ARM-BN", "ARM-CML:task",
                                                         "ARM-LL"])
    parser.add_argument("--data-root", required=True, help="the folder with the MNIST files")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for method in args.methods:
        cpu, wall = step_seconds(method, args.steps, args.data_root)
        print(f"{method}: {cpu:.2f} cpu-s/step, {wall:.2f} wall-s/step", flush=True)


if __name__ == "__main__":
    main()
