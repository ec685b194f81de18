"""Unsupervised meta-learning table (CACTUs, UMTRA) against classifiers fitted on the same
embedding, and the supervised oracle.

Every cell is (setting, row, seed) with setting ``<dataset>-<ways>w<shots>s``; a row is

- an embedding baseline, fitted on the labelled SUPPORT set of each test episode, on the
  features of an embedding fitted on the unlabelled training images: ``knn`` (1-nearest
  neighbour, Euclidean), ``logistic`` (multinomial logistic regression on L2-normalised
  features, `fit_logistic`), ``mlp`` (one hidden layer of 64 ReLU units, dropout 0.5 while
  fitting, 100 full-batch Adam steps of lr 0.01), ``cluster-match`` (below);
- ``cactus-maml`` / ``cactus-protonet``: meta-trained on CACTUs tasks of that embedding
  (`metalab.tasks.cactus`) through the shipped configs and the trainer;
- ``umtra-protonet`` (no embedding): meta-trained on UMTRA tasks;
- ``oracle-protonet`` / ``oracle-maml``: the same learners meta-trained on the labelled
  training episodes with the same budget.

Cluster matching (our reading of the paper's baseline): the test episode's support and
query features are clustered by k-means into ``ways`` clusters (seeded); each cluster takes
the majority label of the support examples in it (ties: the lower label), a cluster without
support examples the label of the support example nearest its centroid; a query gets its
cluster's label.

Datasets (``--dataset``, the data overrides of `fewshot_table.DATASETS`): ``glyphs``, and
``omniglot-small`` (``--omniglot-root``: the folder with images_background_small1/2.zip): the
embedding, the constructed tasks and the oracle's labelled episodes come from small1's
alphabets (Latin held out for validation), the test episodes from small2's alphabets that
small1 lacks. Each dataset keeps its own budget in the results file (``settings``), so
Omniglot's CACTUs can use fewer clusters (``--clusters 50``: about 40 images each, as
k = 500 on the full background set).

All rows of a setting are scored on the same labelled test episodes (``eval.seed``).
ProtoNet rows meta-trained at 5-way are evaluated at 20-way too; a MAML head has ``ways``
outputs, so a MAML row's 20-way cells come from 20-way meta-training (``--maml-ways 5,20``;
20-way constructed tasks, same steps and meta-batch). Per cell: the mean accuracy over
``--episodes`` test episodes; per row: the mean and Student-t 95% interval over seeds.

Below the table: each CACTUs row minus each baseline on the same seeds (paired), and the
headline, each CACTUs row minus the best support-set classifier (kNN, logistic, MLP: the
one with the highest mean over the shared seeds) of the same embedding, paired per seed.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/unsupervised_table.py --reuse
    python benchmarks/unsupervised_table.py --reuse --rows knn,logistic --seeds 0,1,2,3
    python benchmarks/unsupervised_table.py --reuse --dataset omniglot-small \
        --omniglot-root ../shared/data/omniglot --clusters 50 --embeddings pca

``--reuse`` keeps the cells already in the results file (so a later session adds cells);
without it the named cells are recomputed. Cells under the embedding ``acai-relu`` are
kept records of the earlier ACAI (ReLU hidden units, `metalab.tasks.acai`'s ``activation:
relu``), which collapsed on the Omniglot subsets; ``--embeddings acai`` runs the current one.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import metalab
from metalab.algorithms.support_heads import fit_logistic, logistic_scores
from metalab.tasks import unsupervised
from metalab.tasks.embeddings import fit_embedding
from metalab.tasks.kmeans import kmeans
from metalab.tasks.unsupervised import parse_unsupervised
from metalab.train.config import load_config, resolve
from metalab.train.report import format_percent, over_seeds, write_json
from metalab.train.run import evaluate_run, train_run
from metalab.train.sources import build_task_source, training_images

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fewshot_table import DATASETS  # noqa: E402  (a sibling script: the data of each dataset)

CONFIG_DIR = Path(metalab.__file__).parent / "configs"
RESULTS = Path(__file__).resolve().parent / "results" / "unsupervised_table.json"
EMBEDDINGS = ("pca", "autoencoder", "acai", "bigan", "deepcluster")
BASELINES = ("knn", "logistic", "mlp", "cluster-match")
META_ROWS = ("cactus-maml", "cactus-protonet")
OTHER_ROWS = ("umtra-protonet", "oracle-protonet", "oracle-maml")
CONFIGS = {"cactus-maml": "cactus-pca-maml-glyphs", "cactus-protonet": "cactus-ae-protonet-glyphs",
           "umtra-protonet": "umtra-protonet-glyphs", "oracle-protonet": "protonet-glyphs-5w1s",
           "oracle-maml": "maml-glyphs-5w1s"}


def budget(args) -> dict[str, dict[str, Any]]:
    """The overrides every meta-trained row shares (the stated budget)."""
    shared = {"model": {"hidden": args.hidden},
              "train": {"meta_batch": args.meta_batch, "val_every": 0,
                        "checkpoint_every": 10**6, "log_every": 50, "progress": False},
              "eval": {"episodes": args.episodes, "batch_size": 20, "queries": 15}}
    unsupervised = {"dims": args.dims, "partitions": args.partitions,
                    "clusters": args.clusters, "iterations": args.iterations,
                    "embedding_options": {"hidden": 512, "steps": args.ae_steps}}
    return {"shared": shared, "unsupervised": unsupervised}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def dataset_overrides(dataset: str, omniglot_root: str | None) -> list[str]:
    """The data overrides of ``dataset`` (`fewshot_table.DATASETS`: ``glyphs`` none,
    ``omniglot-small`` train on small1's alphabets, test on small2's that small1 lacks)."""
    if dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    if any("{root}" in o for o in DATASETS[dataset]) and omniglot_root is None:
        raise ValueError(f"--dataset {dataset} needs --omniglot-root (the folder with "
                         f"images_background_small1.zip and _small2.zip)")
    return [o.format(root=omniglot_root) for o in DATASETS[dataset]]


def row_config(row: str, embedding: str | None, seed: int, args, ways: int = 5
               ) -> dict[str, Any]:
    """The resolved config of one meta-trained row, meta-training at ``ways``-way 1-shot."""
    spec = budget(args)
    shipped = load_config(CONFIG_DIR / f"{CONFIGS[row]}.yaml",
                          dataset_overrides(args.dataset, args.omniglot_root))
    config = _merge(shipped, spec["shared"])
    steps = args.maml_steps if row.endswith("maml") else args.protonet_steps
    config = _merge(config, {"train": {"steps": steps, "seed": seed}})
    data = {**config["data"], "ways": ways}
    if row.startswith("cactus"):
        data["unsupervised"] = {"method": "cactus", "embedding": embedding,
                                **spec["unsupervised"], "seed": seed}
    if row.startswith("oracle"):
        data["queries"] = 5  # as the constructed tasks: the same per-class query count
    config["data"] = data
    return resolve(config)


def meta_cells(row: str, embedding: str | None, seed: int, args, ways: int = 5
               ) -> dict[str, float]:
    """Meta-train one row at ``ways``-way and evaluate it there; a ProtoNet row trained at
    5-way is evaluated at 20-way too (a MAML head has ``ways`` outputs: its 20-way cells
    come from 20-way meta-training, ``--maml-ways 5,20``)."""
    config = row_config(row, embedding, seed, args, ways)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        start = time.time()
        train_run(config, run)
        seconds = time.time() - start
        scores = {f"{ways}w1s": evaluate_run(run, episodes=args.episodes)["mean"]}
        if row.endswith("protonet") and ways == 5:
            scores["20w1s"] = evaluate_run(run, episodes=args.episodes, ways=20)["mean"]
    return {setting: {"accuracy": value, "train_seconds": seconds}
            for setting, value in scores.items()}


# -- embedding baselines ---------------------------------------------------------------
def knn(support: Tensor, labels: Tensor, query: Tensor, ways: int) -> Tensor:
    return labels[torch.cdist(query, support).argmin(1)]


def logistic(support: Tensor, labels: Tensor, query: Tensor, ways: int) -> Tensor:
    head = fit_logistic(support.double(), labels, ways)
    return logistic_scores(head, query.double()).argmax(1)


def mlp(support: Tensor, labels: Tensor, query: Tensor, ways: int, seed: int = 0) -> Tensor:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(support.shape[1], 64), nn.ReLU(), nn.Dropout(0.5),
                            nn.Linear(64, ways))
    mean, std = support.mean(0), support.std(0).clamp_min(1e-6) if len(support) > 1 else 1.0
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    with torch.enable_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in range(100):
            loss = F.cross_entropy(net((support - mean) / std), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    return net((query - mean) / std).argmax(1)


def cluster_match(support: Tensor, labels: Tensor, query: Tensor, ways: int,
                  seed: int = 0) -> Tensor:
    """Module docstring: k-means of support + query, clusters named by support majority."""
    points = torch.cat([support, query]).double()
    result = kmeans(points, ways, torch.Generator().manual_seed(seed))
    cluster_label = torch.empty(ways, dtype=torch.long)
    support_clusters = result.assignments[: len(support)]
    for cluster in range(ways):
        members = labels[support_clusters == cluster]
        if len(members):
            cluster_label[cluster] = torch.bincount(members, minlength=ways).argmax()
        else:
            nearest = torch.cdist(result.centroids[cluster:cluster + 1], support.double())
            cluster_label[cluster] = labels[nearest.argmin()]
    return cluster_label[result.assignments[len(support):]]


CLASSIFIERS = {"knn": knn, "logistic": logistic, "mlp": mlp, "cluster-match": cluster_match}


_FITTED: dict[tuple, Any] = {}


def fit_embedding_once(name: str, images: Tensor, **options):
    """`fit_embedding` memoised in this process, so a seed's baseline rows and its CACTUs
    rows share one fit (a fit is a function of its images, name and options, seed
    included); installed as `metalab.tasks.unsupervised`'s fit by `main`."""
    key = (name, tuple(images.shape), float(images.double().sum()),
           json.dumps(options, sort_keys=True))
    if key not in _FITTED:
        _FITTED[key] = fit_embedding(name, images, **options)
    return _FITTED[key]


def baseline_cells(embedding: str, seed: int, ways: int, rows: list[str], args
                   ) -> dict[str, float]:
    """Accuracy of each baseline row on the same test episodes the meta-learners see."""
    config = row_config("cactus-protonet", embedding, seed, args)
    config["data"]["ways"] = ways
    spec = parse_unsupervised(config["data"]["unsupervised"])
    images = training_images(config["data"])
    fitted = fit_embedding_once(spec.embedding, images.images, dims=spec.dims, seed=spec.seed,
                           **spec.embedding_options)
    source = build_task_source(config, "test", 20, seed=config["eval"]["seed"], queries=15)
    correct = {row: [] for row in rows}
    episodes = 0
    while episodes < args.episodes:
        batch = source.sample()
        for t in range(len(batch)):
            if episodes >= args.episodes:
                break
            support, query = fitted(batch.support_x[t]), fitted(batch.query_x[t])
            for row in rows:
                predicted = CLASSIFIERS[row](support, batch.support_y[t], query, ways)
                correct[row].append(float((predicted == batch.query_y[t]).double().mean()))
            episodes += 1
    return {row: sum(v) / len(v) for row, v in correct.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rows", default=",".join((*BASELINES, *META_ROWS, *OTHER_ROWS)))
    parser.add_argument("--embeddings", default=",".join(EMBEDDINGS))
    parser.add_argument("--ways", default="5,20", help="test settings of the baselines")
    parser.add_argument("--maml-ways", default="5",
                        help="meta-training (= test) ways of the MAML rows, e.g. 5,20")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--protonet-steps", type=int, default=300)
    parser.add_argument("--maml-steps", type=int, default=150)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--dims", type=int, default=32)
    parser.add_argument("--partitions", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=500)
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--ae-steps", type=int, default=1000)
    parser.add_argument("--dataset", default="glyphs", help=f"one of {sorted(DATASETS)}")
    parser.add_argument("--omniglot-root", default=None,
                        help="omniglot-small: the folder with images_background_small1/2.zip")
    parser.add_argument("--reuse", action="store_true", help="keep cells already computed")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--merge", type=Path, nargs="*", default=[],
                        help="results files of the same settings (e.g. one process per seed) "
                             "whose cells are added to --out")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    torch.set_num_threads(1)
    unsupervised.fit_embedding = fit_embedding_once
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = args.rows.split(",")
    embeddings = args.embeddings.split(",")
    dataset_overrides(args.dataset, args.omniglot_root)  # a bad --dataset fails here
    settings = _budget_settings(vars(args))
    payload = {"settings": {}, "cells": {}}
    for path in ([args.out] if args.out.exists() else []) + args.merge:
        try:
            merge_results(payload, json.loads(path.read_text()))
        except ValueError as error:
            raise SystemExit(f"{path}: {error}") from None
    try:
        merge_results(payload, {"settings": {args.dataset: settings}, "cells": {}})
    except ValueError as error:
        raise SystemExit(f"{args.out}: {error}; use another --out") from None
    payload["machine"] = platform.processor() or platform.machine()
    cells = payload["cells"]
    if args.merge:
        write_json(args.out, payload)

    def have(key: str) -> bool:
        return args.reuse and key in cells

    def store(key: str, value: dict) -> None:
        cells[key] = value
        write_json(args.out, payload)
        print(key, value, flush=True)

    data = args.dataset
    for seed in seeds:
        for embedding in embeddings:
            for ways in (int(w) for w in args.ways.split(",")):
                todo = [r for r in rows if r in BASELINES
                        and not have(f"{data}-{ways}w1s/{r}/{embedding}/seed{seed}")]
                if todo:
                    start = time.time()
                    scores = baseline_cells(embedding, seed, ways, todo, args)
                    for row, value in scores.items():
                        store(f"{data}-{ways}w1s/{row}/{embedding}/seed{seed}",
                              {"accuracy": value, "seconds": time.time() - start})
            for row, ways in meta_runs([r for r in rows if r in META_ROWS], args):
                if not have(f"{data}-{ways}w1s/{row}/{embedding}/seed{seed}"):
                    for setting, value in meta_cells(row, embedding, seed, args, ways).items():
                        store(f"{data}-{setting}/{row}/{embedding}/seed{seed}", value)
        for row, ways in meta_runs([r for r in rows if r in OTHER_ROWS], args):
            if not have(f"{data}-{ways}w1s/{row}/-/seed{seed}"):
                for setting, value in meta_cells(row, None, seed, args, ways).items():
                    store(f"{data}-{setting}/{row}/-/seed{seed}", value)
    table = summary(cells) + "\n\n" + paired_summary(cells) + "\n\n" + headline_summary(cells)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)


def meta_runs(rows: list[str], args) -> list[tuple[str, int]]:
    """(row, meta-training ways) pairs to run: ProtoNet rows at 5-way (their 20-way cells
    are evaluations of the 5-way run), MAML rows at each of ``--maml-ways``."""
    maml_ways = [int(w) for w in args.maml_ways.split(",")]
    return [(row, ways) for row in rows
            for ways in (maml_ways if row.endswith("maml") else [5])]


# Arguments that select which cells run or where they go, not what a cell's value is.
NOT_BUDGET = ("reuse", "out", "rows", "merge", "seeds", "embeddings", "ways", "maml_ways",
              "dataset", "omniglot_root")


def _budget_settings(settings: dict) -> dict:
    """The settings that change a cell's value (files of older versions also held others)."""
    return {k: v for k, v in settings.items() if k not in NOT_BUDGET}


def merge_results(payload: dict, other: dict) -> None:
    """Add ``other``'s cells and per-dataset budget settings to ``payload``; a dataset both
    hold with different settings is a ValueError. ``settings`` maps a dataset to its budget
    (files written before the Omniglot option held the glyphs budget alone, unnested)."""
    theirs = other.get("settings", {})
    if "episodes" in theirs:  # the older, unnested form: glyphs only
        theirs = {"glyphs": theirs}
    for dataset, settings in theirs.items():
        settings = _budget_settings(settings)
        ours = payload["settings"].setdefault(dataset, settings)
        if ours != settings:
            raise ValueError(f"{dataset} cells were computed with other settings {settings} "
                             f"than {ours}")
    payload["cells"].update(other.get("cells", {}))


def summary(cells: dict[str, dict]) -> str:
    """Markdown: one line per (setting, row, embedding), mean ± 95% CI over seeds."""
    groups: dict[str, list[float]] = {}
    for key, value in cells.items():
        groups.setdefault(key.rsplit("/", 1)[0], []).append(value["accuracy"])
    lines = ["| setting | row | embedding | accuracy (mean ± 95% CI over seeds) | seeds |",
             "|---|---|---|---|---|"]
    for key in sorted(groups):
        setting, row, embedding = key.split("/")
        entry = over_seeds(groups[key])
        shown = format_percent(entry) if entry["n"] > 1 else f"{100 * entry['mean']:.1f} (one seed)"
        lines.append(f"| {setting} | {row} | {embedding} | {shown} | {entry['n']} |")
    return "\n".join(lines)


def cactus_groups(accuracy: dict[str, float]):
    """``(group, setting, row, embedding, seeds)`` of every CACTUs row in ``accuracy`` (keys
    ``setting/row/embedding/seedN``), seeds sorted."""
    for group in sorted({key.rsplit("/", 1)[0] for key in accuracy}):
        setting, row, embedding = group.split("/")
        if row in META_ROWS:
            yield group, setting, row, embedding, sorted(
                key.rsplit("/", 1)[1] for key in accuracy if key.startswith(group + "/"))


def paired_difference(accuracy: dict[str, float], group: str, other: str,
                      seeds: list[str]) -> tuple[str, int]:
    """``group`` minus ``other`` on the same seeds, in points: (``mean ± 95% CI`` as shown
    in the tables, number of seeds)."""
    entry = over_seeds([100 * (accuracy[f"{group}/{seed}"] - accuracy[f"{other}/{seed}"])
                        for seed in seeds])
    shown = (f"{entry['mean']:+.1f} ± {entry['ci95']:.1f}" if entry["n"] > 1
             else f"{entry['mean']:+.1f} (one seed)")
    return shown, entry["n"]


def paired_summary(cells: dict[str, dict]) -> str:
    """Markdown: each CACTUs row minus each baseline of the same setting and embedding, on
    the seeds both have (the same fitted embedding), mean ± 95% CI of the differences."""
    accuracy = {key: value["accuracy"] for key, value in cells.items()}
    lines = ["| setting | embedding | CACTUs row | minus baseline | difference (points) | seeds |",
             "|---|---|---|---|---|---|"]
    for group, setting, row, embedding, seeds in cactus_groups(accuracy):
        for baseline in BASELINES:
            other = f"{setting}/{baseline}/{embedding}"
            shared = [seed for seed in seeds if f"{other}/{seed}" in accuracy]
            if shared:
                shown, n = paired_difference(accuracy, group, other, shared)
                lines.append(f"| {setting} | {embedding} | {row} | {baseline} | {shown} | {n} |")
    return "\n".join(lines)


CLASSIFIER_ROWS = ("knn", "logistic", "mlp")


def headline_summary(cells: dict[str, dict]) -> str:
    """Markdown: each CACTUs row minus the best support-set classifier of the same setting
    and embedding (of kNN, logistic, MLP, the highest mean over the seeds they share with
    the CACTUs row), paired per seed, mean ± 95% CI of the differences."""
    accuracy = {key: value["accuracy"] for key, value in cells.items()}
    lines = ["| setting | embedding | CACTUs row | best classifier | CACTUs minus it (points) "
             "| seeds |", "|---|---|---|---|---|---|"]
    for group, setting, row, embedding, seeds in cactus_groups(accuracy):
        shared = [seed for seed in seeds if all(
            f"{setting}/{b}/{embedding}/{seed}" in accuracy for b in CLASSIFIER_ROWS)]
        if not shared:
            continue
        best = max(CLASSIFIER_ROWS, key=lambda b: sum(
            accuracy[f"{setting}/{b}/{embedding}/{seed}"] for seed in shared))
        shown, n = paired_difference(accuracy, group, f"{setting}/{best}/{embedding}", shared)
        lines.append(f"| {setting} | {embedding} | {row} | {best} | {shown} | {n} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
