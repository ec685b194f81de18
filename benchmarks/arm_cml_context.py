"""Does a trained ARM-CML use its context? Accuracy with the right and with wrong contexts.

ARM-CML predicts ``f([x, c])`` with ``c`` the batch mean of the context network's outputs
on the group's unlabelled batch (Zhang, Marklund et al. 2021, sec. 4). If the prediction
network ignores ``c``, ARM-CML is ERM with a different model, and nothing it gains can
come from adaptation. For each run directory given this script evaluates, on the same
test batches of every group (``--per-group`` examples in batches of ``--batch-size``),
the model with

- ``own``: the context of the batch itself (ARM-CML as trained);
- ``upright``: the context of the 0-degree group's batch, for every group;
- ``opposite``: the context of the group 7 places further along (0 <-> 70 degrees ...);
- ``mean``: the mean of all groups' contexts (one context for every group);
- ``zero``: a context of zeros.

and prints average and worst-group accuracy for each, plus the spread of the contexts
(how far apart the groups' contexts are relative to their norm).

    OMP_NUM_THREADS=1 python benchmarks/arm_cml_context.py RUN [RUN ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from metalab.train.build import build_task_source
from metalab.train.run import load_run, read_run_config

CONTEXTS = ("own", "upright", "opposite", "mean", "zero")


def group_batches(dataset, per_group: int, batch_size: int) -> list[list[tuple]]:
    """For each group, its first ``per_group`` test examples in batches (x, y)."""
    out = []
    for members in dataset.group_indices():
        chosen = members[:per_group]
        out.append([dataset.batch(chosen[i:i + batch_size])
                    for i in range(0, len(chosen), batch_size)])
    return out


@torch.no_grad()
def context_accuracies(learner, batches: list[list[tuple]]) -> dict:
    """Average and worst-group accuracy of ``learner`` with each kind of context."""
    learner.eval()
    contexts = [[learner.context(x) for x, _ in group] for group in batches]
    groups = len(batches)
    mean = [torch.stack([contexts[g][i] for g in range(groups)]).mean(0)
            for i in range(len(batches[0]))]
    chooser = {
        "own": lambda g, i: contexts[g][i],
        "upright": lambda g, i: contexts[0][i],
        "opposite": lambda g, i: contexts[(g + groups // 2) % groups][i],
        "mean": lambda g, i: mean[i],
        "zero": lambda g, i: torch.zeros_like(contexts[g][i]),
    }
    result = {}
    for name, choose in chooser.items():
        per_group = []
        for g, group in enumerate(batches):
            correct = total = 0
            for i, (x, y) in enumerate(group):
                logits = learner.predict_with_context(x, choose(g, i))
                correct += int((logits.argmax(-1) == y).sum())
                total += len(y)
            per_group.append(correct / total)
        result[name] = {"average": sum(per_group) / groups, "worst": min(per_group),
                        "per_group": per_group}
    flat = torch.stack([torch.stack(c).mean(0).flatten() for c in contexts])
    result["context_spread"] = float((flat - flat.mean(0)).norm(dim=1).mean()
                                     / flat.norm(dim=1).mean())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--per-group", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = {}
    for run_dir in args.runs:
        config = read_run_config(run_dir)
        dataset = build_task_source(config, "test", 1, seed=0).dataset
        learner = load_run(run_dir)
        result = context_accuracies(learner, group_batches(dataset, args.per_group,
                                                           args.batch_size))
        report[str(run_dir)] = result
        cells = " | ".join(f"{100 * result[c]['average']:.1f} / {100 * result[c]['worst']:.1f}"
                           for c in CONTEXTS)
        print(f"| {run_dir} | {cells} | {result['context_spread']:.3f} |", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
