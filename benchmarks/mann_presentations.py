"""MANN's per-instance accuracy (Santoro et al. 2016, Figure 2) for trained runs.

For each run directory (a `mann` or `mann-lstm` run, or any learner with a public
``episode_logits(inputs, targets)``): draw test episodes from the run's data (all of an
episode's support and query examples, e.g. 5 classes x 10 instances), put the steps in a
random order, run the learner over the sequence with offset labels (`MANN.episode_logits`),
and report the accuracy at the k-th presentation of a class (k = 1, 2, 5, 10 and every k up
to the instances per class) with a 95% interval over episodes. Writes
``RUN_DIR/presentations.json`` and, with ``--png``, the curves of all runs
(`metalab.cli.plot_presentations`, also ``metalab plot --presentations RUN_DIR ...``).

    OMP_NUM_THREADS=1 python benchmarks/mann_presentations.py RUN_MANN RUN_LSTM \
        --episodes 200 --png /tmp/presentations.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from metalab.algorithms.mann import MANN, MANNLSTM
from metalab.cli.plot_presentations import RESULT_FILE, plot_presentation_results
from metalab.tasks import TaskBatch
from metalab.tasks.sequence import (
    accuracy_by_presentation,
    episode_as_sequence,
    presentation_numbers,
    random_order,
)
from metalab.train.evaluator import mean_ci95
from metalab.train.run import load_run, read_run_config
from metalab.train.sources import build_task_source

REPORTED = (1, 2, 5, 10)


def accuracy_table(learner, batches, episodes: int, seed: int) -> dict:
    """Accuracy per presentation number of ``learner`` on ``episodes`` episodes of the
    `TaskBatch` iterator ``batches``, each episode's steps in a random order."""
    generator = torch.Generator().manual_seed(seed)
    correct, presentations = [], []
    start = time.perf_counter()
    with torch.no_grad():
        while len(correct) < episodes:
            batch = next(batches)
            for i in range(len(batch)):
                task = batch[i]
                order = random_order(len(task.support_y) + len(task.query_y), generator=generator)
                sequence = episode_as_sequence(*task, batch.num_classes, "offset", order)
                logits = learner.episode_logits(sequence.inputs, sequence.targets)
                correct.append(logits.argmax(-1) == sequence.targets)
                presentations.append(presentation_numbers(sequence.targets))
    correct, presentations = torch.stack(correct[:episodes]), torch.stack(
        presentations[:episodes])
    numbers = list(range(1, int(presentations.max()) + 1))
    table = accuracy_by_presentation(correct, presentations, numbers)
    stats = [mean_ci95(column[~column.isnan()]) for column in table.T]
    return {"episodes": episodes, "seed": seed, "numbers": numbers,
            "accuracy": [m for m, _ in stats], "ci95": [c for _, c in stats],
            "seconds": round(time.perf_counter() - start, 1)}


def presentation_table(run_dir: Path, episodes: int, seed: int, split: str = "test") -> dict:
    """Accuracy per presentation number of the run's learner on ``episodes`` episodes."""
    config = read_run_config(run_dir)
    learner = load_run(run_dir)
    if not hasattr(learner, "episode_logits"):
        raise ValueError(f"{run_dir}: {type(learner).__name__} has no episode_logits "
                         f"(a sequence learner such as mann or mann-lstm is needed)")
    source = build_task_source(config, split, 20, seed=seed)
    batches = iter(source.sample, None)
    result = accuracy_table(learner, batches, episodes, seed)
    return {"label": f"{config['algorithm']['name']} ({run_dir.name})",
            "method": config["algorithm"]["name"], "split": split, **result}


def synthetic_episodes(tasks: int, generator: torch.Generator, ways: int = 5,
                       instances: int = 10, dim: int = 16, noise: float = 0.3) -> TaskBatch:
    """Episodes of ``ways`` classes, each a random Gaussian prototype in ``dim`` dimensions
    shown ``instances`` times with Gaussian noise (``instances - 1`` support, 1 query)."""
    prototypes = torch.randn(tasks, ways, 1, dim, generator=generator)
    x = prototypes + noise * torch.randn(tasks, ways, instances, dim, generator=generator)
    y = torch.arange(ways).view(1, ways, 1).expand(tasks, ways, instances)

    def flat(t: Tensor) -> Tensor:
        return t.reshape(tasks, -1, *t.shape[3:])

    return TaskBatch(flat(x[:, :, :-1]), flat(y[:, :, :-1]), flat(x[:, :, -1:]),
                     flat(y[:, :, -1:]), num_classes=ways)


def synthetic_comparison(steps: int, episodes: int, seed: int,
                         read_strengths: tuple[float | None, ...] = (None,)) -> list[dict]:
    """MANN (once per entry of ``read_strengths``) and its LSTM baseline trained for
    ``steps`` Adam steps (meta-batch 16, lr 1e-3) on `synthetic_episodes` (features given:
    an identity embedding), then measured."""
    learners = [("mann" if s is None else f"mann, read strength {s:g}", MANN,
                 dict(slots=32, size=16, read_strength=s)) for s in read_strengths]
    results = []
    for name, learner_class, options in learners + [("mann-lstm", MANNLSTM, {})]:
        torch.manual_seed(seed)
        learner = learner_class(nn.Identity(), ways=5, controller_size=64, embedding_dim=16,
                                **options)
        optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad()
            learner.meta_loss(synthetic_episodes(16, generator))[0].backward()
            optimizer.step()
        train_seconds = round(time.perf_counter() - start, 1)
        test_generator = torch.Generator().manual_seed(seed + 1)
        batches = iter(lambda g=test_generator: synthetic_episodes(20, g), None)
        result = accuracy_table(learner.eval(), batches, episodes, seed)
        results.append({"label": f"{name} (synthetic, {steps} steps)", "method": name,
                        "train_steps": steps, "train_seconds": train_seconds, **result})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="*", type=Path)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="test")
    parser.add_argument("--png", type=Path, help="write the curves of every run here")
    parser.add_argument("--synthetic", type=int, metavar="STEPS",
                        help="instead of runs: train MANN and the LSTM for STEPS steps on "
                             "synthetic Gaussian-prototype episodes, then measure")
    parser.add_argument("--json", type=Path, help="with --synthetic: write the results here")
    parser.add_argument("--read-strengths", nargs="+", default=["none"], metavar="S",
                        help="with --synthetic: one MANN per value, 'none' for the paper's "
                             "read, a number s for the key strength s (1 + softplus(.))")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    if args.synthetic is not None:
        strengths = tuple(None if s == "none" else float(s) for s in args.read_strengths)
        results = synthetic_comparison(args.synthetic, args.episodes, args.seed, strengths)
        if args.json is not None:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    for run_dir in args.run_dirs:
        result = presentation_table(run_dir, args.episodes, args.seed, args.split)
        (run_dir / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
        results.append(result)
    for result in results:
        cells = "  ".join(f"{k}: {result['accuracy'][k - 1]:.3f}+-{result['ci95'][k - 1]:.3f}"
                          for k in REPORTED if k <= len(result["numbers"]))
        print(f"{result['label']}: {cells}  ({result['episodes']} episodes, "
              f"{result['seconds']} s)")
    if args.png is not None:
        print(f"wrote {plot_presentation_results(results, args.png)}")


if __name__ == "__main__":
    main()
