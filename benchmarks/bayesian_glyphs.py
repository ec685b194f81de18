"""Glyphs 5-way 1-shot: accuracy, negative log-likelihood and expected calibration error
(15 equal-width bins, pooled over every query; 95% CI by a bootstrap over episodes) of MAML,
an ensemble of 5 MAMLs, BMAML and LLAMA, each through `Evaluator` (the path of
`metalab eval`) on the same seeded test episodes.

Runs (``RUNS/...``, trained beforehand with ``metalab train``, see docs/bayesian-methods.md):

- ``maml-seed0`` .. ``maml-seed4``: ``maml-glyphs-5w1s`` with ``train.seed=0..4``;
- ``bmaml``: ``bmaml-glyphs-5w1s`` (only for the ``bmaml`` row).

MAML is ``maml-seed0``. The ensemble is the five MAML runs as the members of a
``maml-ensemble-glyphs-5w1s`` learner: its members never interact and its meta-loss is the
mean of their MAML losses, so independently trained MAMLs are its members (up to Adam's
``eps`` under the ``1/M`` scale of each member's gradient). LLAMA is ``maml-seed0``'s
meta-parameters in a ``llama-glyphs-5w1s`` learner (LLAMA is trained by MAML's objective).
``svgd on the 5 MAMLs`` is BMAML's adaptation and predictive (SVGD, mean softmax) with the five
MAML runs as its initial particles, without BMAML's meta-training.

    python benchmarks/bayesian_glyphs.py --runs /tmp/glyph-runs --episodes 600 \
        --out benchmarks/results/bayesian_glyphs
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from metalab.cli.main import resolve_config_path
from metalab.functional import parameter_key
from metalab.train import load_config, load_run
from metalab.train.build import build_meta_learner
from metalab.train.evaluator import Evaluator
from metalab.train.report import format_plain, write_json
from metalab.train.run import read_run_config
from metalab.train.sources import build_task_source

MEMBERS = 5


def with_algorithm(run: Path, config_name: str) -> dict:
    """``run``'s config with the algorithm section of ``config_name``."""
    config = read_run_config(run)
    config["algorithm"] = dict(load_config(resolve_config_path(config_name))["algorithm"])
    return config


def ensemble_of(runs: Path):
    members = [load_run(runs / f"maml-seed{s}") for s in range(MEMBERS)]
    ensemble = build_meta_learner(with_algorithm(runs / "maml-seed0",
                                                 "maml-ensemble-glyphs-5w1s"))
    with torch.no_grad():
        for name in ensemble.names:
            for m, member in enumerate(members):
                ensemble.particles[parameter_key(name)][m].copy_(
                    dict(member.model.named_parameters())[name])
    return ensemble


def svgd_of(runs: Path):
    """BMAML's test-time inference (SVGD over 5 particles) started from the 5 MAML runs'
    meta-parameters: the particles of a ``bmaml-glyphs-5w1s`` learner, without BMAML's
    meta-training."""
    ensemble = ensemble_of(runs)
    bmaml = build_meta_learner(with_algorithm(runs / "maml-seed0", "bmaml-glyphs-5w1s"))
    bmaml.load_state_dict(ensemble.state_dict())
    return bmaml


def llama_of(runs: Path):
    maml = load_run(runs / "maml-seed0")
    llama = build_meta_learner(with_algorithm(runs / "maml-seed0", "llama-glyphs-5w1s"))
    llama.load_state_dict(maml.state_dict())
    return llama


LEARNERS = {"maml": lambda runs: load_run(runs / "maml-seed0"),
            "maml-ensemble (5 MAMLs)": ensemble_of,
            "bmaml": lambda runs: load_run(runs / "bmaml"),
            "svgd on the 5 MAMLs (no BMAML meta-training)": svgd_of,
            "llama (last-layer Laplace, probit)": llama_of}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--methods", nargs="+", default=list(LEARNERS))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--combine", nargs="+", type=Path, default=None,
                        help="JSON files of earlier runs (one method each): write one table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = read_run_config(args.runs / "maml-seed0")
    results, started = {}, time.time()
    if args.combine:
        args.methods = []
        for path in args.combine:
            earlier = json.loads(path.read_text())
            results.update(earlier["results"])
            started -= earlier["seconds"]
    for name in args.methods:
        learner = LEARNERS[name](args.runs)
        source = build_task_source(config, "test", config["eval"]["batch_size"],
                                   seed=config["eval"]["seed"])
        result = Evaluator(args.episodes).evaluate(learner, source)
        results[name] = result
        print(name, {k: round(v, 4) for k, v in result.items() if isinstance(v, float)},
              flush=True)
    seconds = time.time() - started
    checkpoint = torch.load(args.runs / "maml-seed0" / "checkpoint.pt", weights_only=False)
    steps = checkpoint["step"], config["train"]["meta_batch"]  # the step it was saved at
    lines = [f"# Glyphs 5-way 1-shot: {args.episodes} test episodes (seed "
             f"{config['eval']['seed']}), {steps[0]} meta-iterations x {steps[1]} tasks per "
             f"run; accuracy and NLL mean ± 95% CI over episodes, ECE (15 bins, pooled) ± "
             f"half-width of a 95% bootstrap interval over episodes; measured in "
             f"{seconds:.0f} s", "", "| method | accuracy (%) | NLL | ECE |", "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {100 * r['mean']:.1f} ± {100 * r['ci95']:.1f} | "
                     f"{format_plain({'mean': r['nll'], 'ci95': r['nll_ci95']})} | "
                     f"{format_plain({'mean': r['ece'], 'ci95': r['ece_ci95']})} |")
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.md").write_text(text + "\n")
        write_json(f"{args.out}.json", {"episodes": args.episodes, "seconds": seconds,
                                        "results": results})


if __name__ == "__main__":
    main()
