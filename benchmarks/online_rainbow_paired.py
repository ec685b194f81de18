"""FTML minus each baseline, paired by seed, from the JSONs of benchmarks/online_rainbow.py.

A seed draws the stream (task order, data, arrival orders) and the initialisation, the same
for every protocol, so per-seed differences remove the between-stream spread.

    PYTHONPATH=src python benchmarks/online_rainbow_paired.py \
        > benchmarks/results/online_rainbow_paired.md
"""

from __future__ import annotations

import json
from pathlib import Path

from metalab.train.report import format_plain, over_seeds

RESULTS = Path(__file__).resolve().parent / "results"
BASELINES = ("ftl", "toe", "scratch")
# comparison -> protocol -> (result file, protocol in it); toe does not depend on the
# inner lr (it trains and is scored with 0 inner steps), so one toe run serves both lrs
COMPARISONS = {
    "digits, inner lr 0.1": {p: ("digits", p) for p in ("ftml", *BASELINES)},
    "digits, inner lr 0.03": {"ftml": ("digits_ftml_inner_lr0_03", "ftml"),
                              "ftl": ("digits_baselines_inner_lr0_03", "ftl"),
                              "toe": ("digits", "toe"),
                              "scratch": ("digits_baselines_inner_lr0_03", "scratch")},
    "glyphs, inner lr 0.1": {p: ("glyphs", p) for p in ("ftml", *BASELINES)},
    "glyphs, FTML inner lr 0.03, baselines 0.1": {
        "ftml": ("glyphs_ftml_inner_lr0_03", "ftml"),
        **{p: ("glyphs", p) for p in BASELINES}},
    "Rainbow MNIST (MNIST files, Conv4-32)": {p: ("mnist", p) for p in ("ftml", *BASELINES)},
}
# the thresholds whose area each comparison reports (the first is the default)
THRESHOLDS = {"Rainbow MNIST (MNIST files, Conv4-32)": ("0.8", "0.9")}
METRICS = (("loss", "cumulative loss", 2), ("final", "mean final acc.", 3))


def per_seed(stem: str, protocol: str, thresholds: tuple[str, ...]
             ) -> dict[str, dict[str, float]]:
    """Per seed: area under examples-to-threshold (never = examples + 1) at each of
    ``thresholds``, cumulative loss, mean final accuracy."""
    path = RESULTS / f"online_rainbow_{stem}.json"
    runs = json.loads(path.read_text())["results"][protocol]
    values = {}
    for seed, run in runs.items():
        tasks = run["summaries"][thresholds[0]]["tasks"]
        values[seed] = {
            **{f"area {k}": sum(t["examples"] + 1 if t["examples_to_threshold"] is None
                                else t["examples_to_threshold"]
                                for t in run["summaries"][k]["tasks"]) for k in thresholds},
            "loss": run["summaries"][thresholds[0]]["cumulative_loss"][-1],
            "final": sum(t["final_accuracy"] for t in tasks) / len(tasks)}
    return values


def main() -> None:
    print("FTML minus baseline, paired by seed (mean ± Student-t 95% CI over 3 seeds; "
          "negative area and loss, positive accuracy = FTML better)")
    for title, spec in COMPARISONS.items():
        if not all((RESULTS / f"online_rainbow_{stem}.json").is_file()
                   for stem, _ in spec.values()):
            continue
        thresholds = THRESHOLDS.get(title, ("0.5",))
        metrics = tuple((f"area {k}", f"area to {k}", 0) for k in thresholds) + METRICS
        data = {name: per_seed(*where, thresholds) for name, where in spec.items()}
        print(f"\n{title}\n\n| baseline | " + " | ".join(m[1] for m in metrics)
              + " |\n" + "|---" * (len(metrics) + 1) + "|")
        for baseline in BASELINES:
            cells = [format_plain(over_seeds([data["ftml"][s][key] - data[baseline][s][key]
                                              for s in data["ftml"]]), digits)
                     for key, _, digits in metrics]
            print(f"| {baseline} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
