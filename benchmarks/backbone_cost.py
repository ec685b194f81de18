"""Seconds per meta-iteration of a few-shot method on a backbone, one thread (issue 19).

Trains a grid cell's config (`benchmarks/fewshot_table.py`: the method's shipped Glyphs 5w1s
config with the grid's data and budget overrides and a backbone variant) for a few steps and
reports the training loop's seconds per step (for the pretrained baselines a step is one
batch of 64 images; 5 such steps hold the images of one 5w1s meta-iteration of 4 tasks):

    OMP_NUM_THREADS=1 python benchmarks/backbone_cost.py --methods ProtoNet RFS MAML \\
        --backbones resnet12 resnet12-w0.25 --dataset omniglot-small \\
        --omniglot-root ../shared/data/omniglot --steps 5

A short run includes the first steps' warm-up, so it overstates the steady cost a little.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

from metalab.train import train_run


def _grid():
    path = Path(__file__).resolve().parent / "fewshot_table.py"
    spec = importlib.util.spec_from_file_location("fewshot_table", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fewshot_table", module)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    ft = _grid()
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["ProtoNet", "RFS", "MAML"],
                        choices=list(ft.METHODS))
    parser.add_argument("--backbones", nargs="+", default=["resnet12-w0.25"])
    parser.add_argument("--augment", default="off", choices=list(ft.AUGMENTS))
    parser.add_argument("--dataset", default="glyphs", choices=list(ft.DATASETS))
    parser.add_argument("--setting", default="5w1s", choices=list(ft.SETTINGS))
    parser.add_argument("--omniglot-root", default=None)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    budget = ft.Budget(steps=args.steps, meta_batch=4, episodes=1)
    for backbone in args.backbones:
        for method in args.methods:
            variant = ft.Variant(backbone, args.augment)
            _, _, config = ft.cell_config(method, args.dataset, args.setting, budget,
                                          args.omniglot_root, variant)
            with tempfile.TemporaryDirectory(prefix="backbone-cost-") as tmp:
                train_run(config, Path(tmp) / "run")
                per_step, steps = ft.seconds_per_iteration(Path(tmp) / "run")
            print(f"{method} {backbone}: {per_step:.3f} s/step over {steps} steps "
                  f"({config['train']['steps']} steps)", flush=True)


if __name__ == "__main__":
    main()
