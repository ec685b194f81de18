"""MSR on the synthetic equivariance problems (Zhou, Knowles, Finn, ICLR 2021, sec. 5.1-5.2).

Meta-trains MAML-FC, MAML-LC, MAML-Conv and MSR-FC on the 1-D rank-1/2/5 families
(`TranslationEquivariantTasks`) and, with ``--rotation``, MAML-Conv and MSR-Conv on the
2-D C4/D4 families (`RotationEquivariantTasks`), then meta-tests every model once on each
test task of the pool (mean query MSE with a 95% CI over test tasks; over seeds too when
several are given). It draws the learned MSR-FC sharing matrix U of the rank-1 run next to
the true convolution pattern (``msr_U.png``). With ``--glyphs`` it also runs the
augmented few-shot experiment (5-way 1-shot glyphs whose query images are rotated /
reflected): MAML, MAML trained with augmentation of support and query, and MSR.

Protocol as the official code: 1 support and 19 query examples, meta-batch 32, one inner
SGD step starting at lr 0.1 with a learned step size, second-order meta-gradient, Adam
(lr 1e-3) in the outer loop, MSR-FC with 3 / 6 / 30 filter parameters for ranks 1 / 2 / 5.
The learned step size is Meta-SGD's (one per adapted entry) where the official code learns
one per layer. Outer steps: ``--steps`` (the official default is 1,000).

The recorded results (benchmarks/results/msr_*) come from, on one CPU thread:

    python benchmarks/msr_synthetic.py --steps 4000 --seeds 0 1
    python benchmarks/msr_synthetic.py --ranks --rotation --rotation-models maml-conv msr-conv \
        --image-size 16 --name msr_rotation
    python benchmarks/msr_synthetic.py --ranks --rotation --rotation-models maml-conv-lr \
        --image-size 16 --name msr_rotation_scaled_lr
    python benchmarks/msr_synthetic.py --ranks --glyphs --name msr_glyphs
    python benchmarks/msr_synthetic.py --quick --rotation --glyphs      # smoke test
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from metalab import datasets
from metalab.algorithms import MAML
from metalab.nn.msr import (
    ROTATION_MODELS,
    TRANSLATION_MODELS,
    conv_classifier,
    inner_parameter_names,
)
from metalab.tasks import EpisodeSampler
from metalab.tasks.augmented import AugmentedEpisodes
from metalab.tasks.symmetry import GROUPS, RotationEquivariantTasks, TranslationEquivariantTasks
from metalab.train import Evaluator, Trainer, load_run, resolve, train_run
from metalab.train.checkpoint import atomic_write_text
from metalab.train.evaluator import mean_ci95
from metalab.train.report import format_plain, over_seeds, write_json

RESULTS = Path(__file__).resolve().parent / "results"
INNER_LR, OUTER_LR, META_BATCH = 0.1, 1e-3, 32


def make_source(problem, split: str, tasks_per_batch: int, seed: int, args):
    """The problem's task family; the test split in pool order (every test task once)."""
    order = "sequential" if split == "test" else "random"
    if isinstance(problem, int):
        return TranslationEquivariantTasks(problem, split, tasks_per_batch, seed=seed,
                                           num_tasks=args.num_tasks, order=order)
    return RotationEquivariantTasks(problem, split, tasks_per_batch, seed=seed,
                                    num_tasks=args.num_tasks, order=order,
                                    image_size=args.image_size)


# A MAML-Conv whose learned inner step size starts near the one-step optimum instead of 0.1:
# with the MSE averaged over C output maps, one step from one example needs lr ~ C / 2, which
# Adam at lr 1e-3 takes thousands of outer steps to reach from 0.1.
SCALED_LR_CONV = "maml-conv-lr"


def initial_inner_lr(problem, kind: str) -> float:
    if kind == SCALED_LR_CONV:
        return 3 * len(GROUPS[problem]) / 2
    return INNER_LR


def problem_config(problem, kind: str, seed: int, args) -> dict:
    """The run's config: Meta-SGD (one inner step, learned step sizes, vmap) on the 1-D
    translation family of rank ``problem`` or the 2-D rotation family of group ``problem``
    (as ``configs/msr-fc-translation.yaml``), the sharing matrices outer-loop only."""
    if isinstance(problem, int):
        data = {"name": "translation-equivariant", "rank": problem}
        model = {"name": "translation", "kind": kind, "rank": problem}
        steps = args.steps
    else:
        data = {"name": "rotation-equivariant", "group": problem, "image_size": args.image_size}
        model = {"name": "rotation", "kind": "maml-conv" if kind == SCALED_LR_CONV else kind,
                 "out_channels": 3 * len(GROUPS[problem])}
        steps = args.rotation_steps
    data.update(num_tasks=args.num_tasks, train_split="train", val_split="test",
                test_split="test")
    test_tasks = int(args.num_tasks * 0.2)
    return resolve({
        "algorithm": {"name": "metasgd", "inner_lr": initial_inner_lr(problem, kind),
                      "inner_steps": 1, "strategy": "vmap"},
        "model": model, "data": data,
        "train": {"steps": steps, "meta_batch": META_BATCH, "lr": OUTER_LR, "seed": seed,
                  "val_every": 0, "checkpoint_every": steps, "log_every": max(1, steps // 20),
                  "progress": False, "device": args.device},
        "eval": {"episodes": test_tasks, "batch_size": min(100, test_tasks)},
    })


def run_one(problem, kind: str, seed: int, args, run_root: Path) -> dict:
    """Train the problem's config into ``run_root/<problem>-<kind>-seed<N>`` (`train_run`),
    then score every test task of the pool once (pool order)."""
    config = problem_config(problem, kind, seed, args)
    run_dir = run_root / f"{problem}-{kind}-seed{seed}"
    started = time.perf_counter()
    train_run(config, run_dir)
    seconds = time.perf_counter() - started
    test_tasks = config["eval"]["episodes"]
    test = make_source(problem, "test", config["eval"]["batch_size"], 2000 + seed, args)
    learner = load_run(run_dir).to(args.device)
    values = Evaluator(test_tasks).per_task(learner, test, args.device)["mse"]
    mean, ci95 = mean_ci95(values)
    steps = config["train"]["steps"]
    print(f"  {str(problem):>4} {kind:<9} seed {seed}: MSE {mean:.4f} ± {ci95:.4f} "
          f"({steps} steps, {seconds:.0f} s)", flush=True)
    return {"problem": problem, "model": kind, "seed": seed, "mse": mean, "ci95": ci95,
            "steps": steps, "train_seconds": seconds, "test_tasks": test_tasks,
            "learner": learner}


# (model, training augmentation) of the augmented-glyphs experiment; all are meta-tested on
# test-alphabet episodes whose query images are randomly rotated / reflected (D4).
GLYPH_RUNS = (("maml-conv", "query"), ("maml-conv", "both"), ("msr-conv", "query"))


def run_glyphs(args, run_root: Path) -> list[dict]:
    """MAML vs MAML trained with augmentation vs MSR on augmented 5-way 1-shot glyphs."""
    train_set, test_set = datasets.build("glyphs", "train"), datasets.build("glyphs", "test")
    rows = []
    for kind, augment in GLYPH_RUNS:
        torch.manual_seed(0)
        model = conv_classifier(kind, ways=5, hidden=args.glyph_hidden)
        learner = MAML(model, inner_lr=0.4, inner_steps=1, loss="cross_entropy",
                       adapt=inner_parameter_names(model))
        train = AugmentedEpisodes(EpisodeSampler(train_set, 5, 1, 5, tasks_per_batch=8, seed=10),
                                  "D4", augment, seed=11)
        started = time.perf_counter()
        Trainer(learner, train, run_root / f"glyphs-{kind}-{augment}", steps=args.glyph_steps,
                lr=OUTER_LR, checkpoint_every=args.glyph_steps, progress=False,
                device=args.device).fit()
        seconds = time.perf_counter() - started
        test = AugmentedEpisodes(EpisodeSampler(test_set, 5, 1, 5, tasks_per_batch=20, seed=20),
                                 "D4", "query", seed=21)
        result = Evaluator(args.glyph_episodes).evaluate(learner, test, args.device)
        name = {"query": "trained on augmented queries", "both": "trained with augmentation "
                "of support and query"}[augment]
        print(f"  glyphs {kind:<9} {name}: accuracy {result['mean']:.4f} ± "
              f"{result['ci95']:.4f} ({args.glyph_steps} steps, {seconds:.0f} s)", flush=True)
        rows.append({"model": kind, "train_augment": augment, "accuracy": result["mean"],
                     "ci95": result["ci95"], "episodes": args.glyph_episodes,
                     "steps": args.glyph_steps, "train_seconds": seconds})
    return rows


def summarise(rows: list[dict]) -> dict:
    """Mean and CI over test tasks (one seed) or Student-t over the seeds' means (several,
    `metalab.train.report.over_seeds`)."""
    if len(rows) == 1:
        return {"mse": rows[0]["mse"], "ci95": rows[0]["ci95"], "over": "test tasks"}
    seeds = over_seeds([r["mse"] for r in rows])
    return {"mse": seeds["mean"], "ci95": seeds["ci95"], "over": f"{len(rows)} seeds"}


def aligned_sharing(U_learned: torch.Tensor, U_true: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``U_learned R`` for the least-squares ``R`` (``U`` is identifiable only up to an
    invertible ``k x k`` map, since ``U v = (U R)(R^-1 v)``) and the relative residual."""
    R = torch.linalg.lstsq(U_learned.double(), U_true.double()).solution
    aligned = U_learned.double() @ R
    residual = ((aligned - U_true).norm() / U_true.norm()).item()
    return aligned, residual


def plot_sharing(U_learned: torch.Tensor, U_true: torch.Tensor, path: Path, rows: int = 68,
                 cols: int = 70) -> float:
    """Columns of the true convolution U and of the learned U (raw and aligned) as weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    U_true = U_true.double()
    aligned, residual = aligned_sharing(U_learned, U_true)
    panels = [("true convolution U", U_true), ("learned U (raw)", U_learned.double()),
              (f"learned U aligned (residual {residual:.3f})", aligned)]
    k = U_learned.shape[1]
    figure, axes = plt.subplots(3, max(k, 3), figsize=(3.2 * max(k, 3), 9.6), squeeze=False)
    for row, (title, U) in enumerate(panels):
        for m in range(axes.shape[1]):
            axis = axes[row, m]
            axis.set_xticks([])
            axis.set_yticks([])
            if m >= U.shape[1]:
                axis.axis("off")
                continue
            column = U[:, m].reshape(rows, cols)
            zoom = column[:20, :22]  # the top-left corner, where the bands are visible
            limit = zoom.abs().max().item() or 1.0
            axis.imshow(zoom.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
            axis.set_title(f"{title}\ncolumn {m} (W[:20, :22])", fontsize=8)
    figure.suptitle("MSR-FC on rank-1 data: each column of U reshaped to the weight W it "
                    "writes", fontsize=10)
    figure.tight_layout()
    temporary = path.with_name(path.name + ".tmp.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    os.replace(temporary, path)
    return residual


def mse_table(results: list[dict]) -> list[str]:
    """Markdown rows: one per model, one column per problem (rank or group)."""
    columns = list(dict.fromkeys(r["problem"] for r in results))
    lines = ["| model | " + " | ".join(
        f"rank {c}" if isinstance(c, int) else c for c in columns) + " |",
        "|---|" + "---|" * len(columns)]
    for kind in dict.fromkeys(r["model"] for r in results):
        cells = []
        for column in columns:
            found = [r for r in results if r["model"] == kind and r["problem"] == column]
            cells.append(format_plain({"mean": found[0]["mse"], "ci95": found[0]["ci95"]}, 4)
                         if found else "-")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6000, help="outer steps, 1-D problems")
    parser.add_argument("--ranks", type=int, nargs="*", default=[1, 2, 5])
    parser.add_argument("--models", nargs="+", default=list(TRANSLATION_MODELS),
                        choices=TRANSLATION_MODELS)
    parser.add_argument("--rotation", action="store_true", help="also the 2-D C4/D4 problems")
    parser.add_argument("--rotation-steps", type=int, default=1000)
    parser.add_argument("--rotation-models", nargs="+",
                        choices=[*ROTATION_MODELS, SCALED_LR_CONV], default=None)
    parser.add_argument("--image-size", type=int, default=32, help="2-D input side (32 official)")
    parser.add_argument("--glyphs", action="store_true",
                        help="also the augmented 5-way 1-shot glyphs experiment (sec. 5.2)")
    parser.add_argument("--glyph-steps", type=int, default=1500)
    parser.add_argument("--glyph-episodes", type=int, default=400)
    parser.add_argument("--glyph-hidden", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--num-tasks", type=int, default=10_000, help="pool size (80/20 split)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="msr_synthetic", help="stem of the result files")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 20 steps, 200-task pool, writes under /tmp")
    args = parser.parse_args()
    if args.quick:
        args.steps = args.rotation_steps = 20
        args.glyph_steps, args.glyph_episodes = 2, 20
        args.num_tasks = 200
        args.out = Path(tempfile.mkdtemp(prefix="msr-quick-"))
    args.out.mkdir(parents=True, exist_ok=True)

    problems = [(rank, kind) for rank in args.ranks for kind in args.models]
    if args.rotation:
        kinds = args.rotation_models or [*ROTATION_MODELS, SCALED_LR_CONV]
        problems += [(group, kind) for group in GROUPS for kind in kinds]
    print(f"MSR synthetic benchmark: {platform.processor() or platform.machine()}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} thread(s)", flush=True)
    results, u_residuals, started = [], {}, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="msr-runs-") as run_root:
        for problem, kind in problems:
            rows = [run_one(problem, kind, seed, args, Path(run_root)) for seed in args.seeds]
            if kind == "msr-fc":
                U = rows[0]["learner"].model[0].U.detach().cpu()
                U_true = make_source(problem, "train", 1, 0, args).sharing_matrix()
                u_residuals[f"rank{problem}"] = aligned_sharing(U, U_true)[1]
                if problem == 1:
                    plot_sharing(U, U_true, args.out / "msr_U.png")
            for row in rows:
                row.pop("learner")
            results.append({"problem": problem, "model": kind, **summarise(rows),
                            "runs": rows})
        glyph_rows = run_glyphs(args, Path(run_root)) if args.glyphs else []
    total = time.perf_counter() - started

    lines = mse_table(results) if results else []
    if glyph_rows:
        lines += ["", "| augmented glyphs, 5-way 1-shot, D4-augmented queries | accuracy |",
                  "|---|---|"]
        lines += [f"| {r['model']} (train augmentation: {r['train_augment']}) | "
                  f"{r['accuracy']:.4f} ± {r['ci95']:.4f} |" for r in glyph_rows]
    table = "\n".join(lines)
    print("\nMeta-test MSE / accuracy (mean ± 95% CI):\n" + table)
    print(f"MSR-FC: relative residual of the learned U after the best linear alignment to "
          f"the data's true U (conv U for rank 1): "
          f"{ {k: round(v, 4) for k, v in u_residuals.items()} }")
    print(f"total {total:.0f} s")
    record = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()},
              "inner_lr_init": INNER_LR, "outer_lr": OUTER_LR, "meta_batch": META_BATCH,
              "machine": platform.processor() or platform.machine(), "device": str(args.device),
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "total_seconds": total, "u_alignment_residual": u_residuals,
              "results": results, "glyphs": glyph_rows}
    write_json(args.out / f"{args.name}.json", record)
    atomic_write_text(args.out / f"{args.name}.md", table + "\n")
    print(f"wrote {args.out / args.name}.json and .md" + (", msr_U.png" if 1 in args.ranks
                                                          else ""))


if __name__ == "__main__":
    main()
