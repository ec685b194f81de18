"""SNAIL's shared-support prefix (`SNAILNet.last_step_after`) against one full sequence per query.

The learner is built from ``configs/snail-omniglot-5w1s.yaml`` (Conv4 embedding on 28x28
grey images, the scaled-down stack: 64 filters, keys 32/128/256, values 16/64/128) with
the setting's ways, shots and queries; the episode is random Omniglot-shaped images (the
timing does not depend on the pixels). Per setting it times, in one process, alternating
which goes first each round, the per-task work of SNAIL (``adapt_task`` then ``predict``,
the query cross-entropy) with the new `SNAIL.predict` and with the old one (each query's
``Ns + 1``-step sequence through ``net``, written out below):

- ``eval``: forward only under ``torch.no_grad`` (meta-test);
- ``train``: forward and backward to every parameter (a meta-training task);
- ``net eval`` / ``net train``: the sequence network alone on ready-made steps.

It reports the ratio of median times old/new (above 1: the new path is faster) and the
largest |difference| of the float32 logits and of the gradients (reassociation only: the
float64 equality is `tests/test_snail_prefix.py`):

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/snail_prefix_speed.py \\
        --out benchmarks/results/snail_prefix_speed
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

import metalab
from metalab.profiling import time_in_turn
from metalab.tasks.sequence import queries_after_support, with_label_channel
from metalab.train.build import build_meta_learner
from metalab.train.config import load_config
from metalab.train.report import write_json

CONFIG = Path(metalab.__file__).parent / "configs" / "snail-omniglot-5w1s.yaml"
SETTINGS = {"5w1s": (5, 1, 15), "5w5s": (5, 5, 15), "20w1s": (20, 1, 5)}  # ways, shots, queries


def old_predict(learner, state, x):
    """SNAIL.predict before this change: the support then each query, ``Nq`` sequences."""
    features = learner.features(x)
    query_steps = with_label_channel(features, features.new_zeros(len(x), learner.ways))
    return learner.net(queries_after_support(state, query_steps))[:, -1]


def new_predict(learner, state, x):
    return learner.predict(state, x)


def build(ways: int, shots: int, queries: int):
    overrides = [f"algorithm.ways={ways}", f"algorithm.shots={shots}", f"data.ways={ways}",
                 f"data.shots={shots}", f"data.queries={queries}"]
    torch.manual_seed(0)
    return build_meta_learner(load_config(CONFIG, overrides))


def episode(ways: int, shots: int, queries: int):
    gen = torch.Generator().manual_seed(1)
    support_x = torch.rand(ways * shots, 1, 28, 28, generator=gen)
    support_y = torch.arange(ways).repeat_interleave(shots)
    query_x = torch.rand(ways * queries, 1, 28, 28, generator=gen)
    query_y = torch.arange(ways).repeat_interleave(queries)
    return support_x, support_y, query_x, query_y


def task_run(learner, predict, data, train: bool):
    """The per-task work: logits (and, training, gradients of the query loss)."""
    support_x, support_y, query_x, query_y = data
    with torch.set_grad_enabled(train):
        state = learner.adapt_task(support_x, support_y, training=False, ways=learner.ways)
        logits = predict(learner, state, query_x)
        if not train:
            return [logits]
        loss = F.cross_entropy(logits, query_y)
        return [logits.detach(), *torch.autograd.grad(loss, list(learner.parameters()))]


def net_run(learner, old: bool, steps, train: bool):
    """The sequence network alone on ready-made support and query steps."""
    prefix, last = steps
    with torch.set_grad_enabled(train):
        if old:
            logits = learner.net(queries_after_support(prefix, last))[:, -1]
        else:
            logits = learner.net.last_step_after(prefix, last)
        if not train:
            return [logits]
        return [logits.detach(), *torch.autograd.grad(logits.logsumexp(1).sum(),
                                                      list(learner.net.parameters()))]


def largest_difference(a, b) -> float:
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(a, b, strict=True))


def measure(setting: str, rounds: int) -> dict:
    ways, shots, queries = SETTINGS[setting]
    learner = build(ways, shots, queries).eval()
    data = episode(ways, shots, queries)
    with torch.no_grad():
        prefix = learner.adapt_task(data[0], data[1], training=False, ways=ways)
        features = learner.features(data[2])
        last = with_label_channel(features, features.new_zeros(len(features), ways))
    row = {"setting": setting, "sequence_steps": ways * shots + 1, "queries": len(data[2])}
    cases = {
        "eval": lambda predict: task_run(learner, predict, data, False),
        "train": lambda predict: task_run(learner, predict, data, True),
        "net eval": lambda predict: net_run(learner, predict is old_predict, (prefix, last),
                                            False),
        "net train": lambda predict: net_run(learner, predict is old_predict, (prefix, last),
                                             True),
    }
    for name, run in cases.items():
        difference = largest_difference(run(old_predict), run(new_predict))
        old, new = time_in_turn(lambda run=run: run(old_predict),
                                lambda run=run: run(new_predict), rounds)
        row[name] = {"old_s": statistics.median(old), "new_s": statistics.median(new),
                     "ratio": statistics.median(old) / statistics.median(new),
                     "round_ratios": [o / n for o, n in zip(old, new, strict=True)],
                     "largest_difference": difference}
        print(setting, name, f"{row[name]['ratio']:.2f}x", f"diff {difference:.1e}",
              flush=True)
    return row


def markdown(rows: list[dict], command: str) -> str:
    names = ["eval", "train", "net eval", "net train"]
    lines = ["# SNAIL: shared support prefix, speed old/new (one process, one thread)", "",
             "    " + command, "",
             "Ratio of median times, old path (one `Ns + 1`-step sequence per query) / new path",
             "(support prefix once, then the query steps as a batch); above 1: the new path is",
             "faster. `eval`/`train`: SNAIL's per-task work (embedding of support and queries,",
             "sequence network, query cross-entropy; `train` adds the backward to every",
             "parameter); `net`: the sequence network alone. In brackets the old and new median",
             "milliseconds (load-inflated: two other benchmark jobs share the 2 cores; read the",
             "ratios), then the range of the per-round ratios. Largest |difference|: float32",
             "logits and gradients, old against new (rounding: the float64 equality is",
             "`tests/test_snail_prefix.py`).", "",
             "| setting (steps, queries) | " + " | ".join(names) + " | largest difference |",
             "|---|" + "---|" * (len(names) + 1)]
    for row in rows:
        cells = [f"{row[n]['ratio']:.2f}x ({1e3 * row[n]['old_s']:.0f} / "
                 f"{1e3 * row[n]['new_s']:.0f} ms; {min(row[n]['round_ratios']):.2f}-"
                 f"{max(row[n]['round_ratios']):.2f})" for n in names]
        diff = max(row[n]["largest_difference"] for n in names)
        lines.append(f"| {row['setting']} ({row['sequence_steps']}, {row['queries']}) | "
                     + " | ".join(cells) + f" | {diff:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="writes OUT.md and OUT.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [measure(setting, args.rounds) for setting in args.settings]
    command = ("OMP_NUM_THREADS=1 nice -n 5 python benchmarks/snail_prefix_speed.py "
               f"--settings {' '.join(args.settings)} --rounds {args.rounds}")
    text = markdown(rows, command)
    print(text)
    if args.out is not None:
        write_json(args.out.with_suffix(".json"), {"command": command, "rows": rows,
                                                   "torch": torch.__version__})
        tmp = args.out.with_suffix(".md.tmp")
        tmp.write_text(text)
        tmp.replace(args.out.with_suffix(".md"))


if __name__ == "__main__":
    main()
