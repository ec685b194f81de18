"""The ``metalab`` command: train, eval, report, plot, list (and data)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def resolve_config_path(name: str) -> Path:
    """A path as given, or the name of a config shipped with metalab."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(f"config {name!r} is neither a file nor a shipped config; "
                            f"`metalab list` shows the shipped ones")


def _train_target(args: argparse.Namespace) -> tuple[dict, Path]:
    """The config and run directory of ``metalab train``.

    ``metalab train CONFIG [--out RUN]`` starts a run; ``metalab train --resume RUN``
    continues one with its saved config (``--resume --out RUN`` and ``CONFIG --resume
    --out RUN`` too). Overrides apply in every form.
    """
    from metalab.train import load_config
    from metalab.train.run import CONFIG_FILE, read_run_config

    if args.config and "=" in args.config and not Path(args.config).exists():
        args.overrides.insert(0, args.config)  # `metalab train --resume --out RUN key=value`
        args.config = None
    if args.config is not None and Path(args.config).is_dir():
        if not args.resume:
            advice = (f"to continue the run there: metalab train --resume {args.config}"
                      if (Path(args.config) / CONFIG_FILE).is_file() else "give a YAML file")
            raise ValueError(f"{args.config} is a directory, not a config; {advice}")
        if args.out and Path(args.out).resolve() != Path(args.config).resolve():
            raise ValueError(f"--resume {args.config} and --out {args.out} name two run "
                             f"directories; give one: metalab train --resume {args.config}")
        args.config, args.out = None, args.config
    if args.config is None:
        if not (args.resume and args.out):
            raise ValueError("give a CONFIG to start a run (metalab train CONFIG --out RUN), "
                             "or the run to continue (metalab train --resume RUN)")
        if not (Path(args.out) / CONFIG_FILE).is_file():
            raise ValueError(f"{args.out} is not a metalab run (no {CONFIG_FILE}); to start "
                             f"one there: metalab train CONFIG --out {args.out}")
        return read_run_config(args.out, args.overrides), Path(args.out)
    try:
        config_path = resolve_config_path(args.config)
    except FileNotFoundError:
        if not args.resume:
            raise
        raise FileNotFoundError(f"{args.config!r} is neither a run directory nor a config; "
                                f"continue a run with: metalab train --resume RUN_DIR") from None
    if args.out:
        out = Path(args.out)
    elif args.resume and config_path.name == CONFIG_FILE:  # `--resume RUN/config.yaml`
        out = config_path.parent
    else:
        out = Path("runs") / config_path.stem
    return load_config(config_path, args.overrides), out


def cmd_train(args: argparse.Namespace) -> int:
    from metalab.train import train_run
    from metalab.train.distributed import is_main_process, process_group

    config, out = _train_target(args)
    with process_group(config["train"]["device"]):
        if args.seeds is not None:
            return _train_seeds(config, out, args.seeds, args.resume)
        try:
            trainer = train_run(config, out, resume=args.resume)
        except KeyboardInterrupt:
            print(f"interrupted; continue with: metalab train --resume {out}",
                  file=sys.stderr)
            return 130
        if is_main_process():
            print(f"trained {trainer.step} steps; run directory: {out}")
        return 0


def _train_seeds(config: dict, out: Path, seeds: str, resume: bool) -> int:
    """``metalab train CONFIG --seeds 0,1,2``: a run per seed in OUT/seed<N>, each evaluated."""
    from metalab.train.distributed import is_main_process
    from metalab.train.report import format_result, markdown_table, read_run, summarise_runs
    from metalab.train.seeds import parse_seeds, train_seeds

    run_dirs = train_seeds(config, out, parse_seeds(seeds), resume=resume)
    if is_main_process() and config.get("online") is not None:  # scored along the stream
        print(f"per-task metrics in each run's stream.json; draw them with: metalab plot "
              f"--stream {' '.join(str(run) for run in run_dirs)}")
        return 0
    if is_main_process():
        for run_dir in run_dirs:
            print(f"{run_dir}: {format_result(read_run(run_dir).result)}")
        print(markdown_table(summarise_runs(run_dirs, by=[])), end="")
        print(f"summarise again with: metalab report {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from metalab.train import evaluate_run
    from metalab.train.report import format_result

    result = evaluate_run(args.run_dir, episodes=args.episodes, split=args.split,
                          inner_steps=args.inner_steps, seed=args.seed,
                          support_size=args.support_size, within=args.within, head=args.head,
                          ways=args.ways, checkpoint=args.checkpoint)
    print(format_result(result))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from metalab.train.report import markdown_table, summarise_runs, write_report

    by = None if args.by is None else [key.strip() for key in args.by.split(",") if key.strip()]
    report = summarise_runs(args.run_dirs, by=by, eval_name=args.eval)
    print(markdown_table(report), end="")
    if args.out:
        markdown, data = write_report(report, Path(args.out))
        print(f"wrote {markdown} and {data}")
    return 0


#: ``metalab plot --KIND``: (module, function, default PNG name beside the first run).
PLOT_KINDS = {
    "groups": ("metalab.cli.plot", "plot_groups", "groups.png"),
    "support_sizes": ("metalab.cli.plot", "plot_support_sizes", "support_sizes.png"),
    "predictive": ("metalab.cli.plot_predictive", "plot_predictive", "predictive.png"),
    "presentations": ("metalab.cli.plot_presentations", "plot_presentations",
                      "presentations.png"),
    "stream": ("metalab.cli.plot_stream", "plot_stream", "stream.png"),
    "reliability": ("metalab.cli.plot_calibration", "plot_reliability", "reliability.png"),
    "coverage": ("metalab.cli.plot_calibration", "plot_coverage", "coverage.png"),
    "adaptation": ("metalab.cli.plot_adaptation", "plot_adaptation", "adaptation.png"),
}


def cmd_plot(args: argparse.Namespace) -> int:
    import importlib

    from metalab.cli.plot import plot_curves

    runs = [Path(run) for run in args.run_dirs]
    out = Path(args.out) if args.out else None
    kind = next((kind for kind in PLOT_KINDS if getattr(args, kind)), None)
    if args.optimizers:
        from metalab.cli.plot_optimizers import plot_optimizers_file

        written = plot_optimizers_file(runs[0], out)
    elif kind is not None:
        module, function, default = PLOT_KINDS[kind]
        plot = getattr(importlib.import_module(module), function)
        options = {"overrides": args.data, "context_sizes": args.contexts,
                   "tasks": args.tasks, "samples": args.samples} if kind == "predictive" else {}
        if kind in ("reliability", "coverage"):
            options = {"episodes": args.episodes}
        base = runs[0].parent if runs[0].is_file() else runs[0]  # an eval JSON: beside it
        written = plot(runs, out or base / default, **options)
    elif len(runs) > 1 and not args.seeds:
        raise ValueError("several run directories need --seeds (their mean curve), --groups, "
                         "--support-sizes, --predictive, --presentations, --stream, "
                         "--reliability, --coverage or --adaptation")
    else:
        written = plot_curves(runs, out, x=args.x, metrics=args.metrics)
    print(f"wrote {written}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from metalab import datasets
    from metalab.algorithms import ALGORITHMS
    from metalab.nn import MODELS
    from metalab.train.sources import REGRESSION_FAMILIES

    print("algorithms: " + ", ".join(sorted(ALGORITHMS)))
    print("models:     " + ", ".join(sorted(MODELS)))
    print("datasets:   " + ", ".join(sorted(datasets.available())))
    print("task families: " + ", ".join(sorted(REGRESSION_FAMILIES)))
    print("configs (metalab train NAME):")
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        print(f"  {path.stem}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metalab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="meta-train from a YAML config")
    train.add_argument("config", nargs="?",
                       help="config file or shipped config name (with --resume: the run "
                            "directory)")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=200")
    train.add_argument("--out", help="run directory (default runs/CONFIG_NAME)")
    train.add_argument("--resume", action="store_true",
                       help="continue an interrupted run: metalab train --resume RUN")
    train.add_argument("--seeds", help="train one run per seed (0,1,2 or 0-4) into "
                                       "OUT/seed<N>/, evaluate each and print the summary")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="meta-test a trained run (mean, 95%% CI)")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--episodes", type=int, help="number of test tasks (default: config)")
    evaluate.add_argument("--split", default="test", help="data split (default test)")
    evaluate.add_argument("--inner-steps", type=int, help="inner steps at meta-test")
    evaluate.add_argument("--seed", type=int, help="seed of the test episodes")
    evaluate.add_argument("--support-size", type=int,
                          help="group data: unlabelled examples per test batch (writes "
                               "eval-<split>-support<N>.json)")
    evaluate.add_argument("--within", help="draw each test episode's classes from one group "
                                           "of this class key, e.g. alphabet (writes "
                                           "eval-...-within-<key>.json)")
    evaluate.add_argument("--head", help="fit this head on the support embeddings: linear, "
                                         "cosine, logistic, prototypes, finetune (any "
                                         "embedding method; writes eval-...-head-<name>.json)")
    evaluate.add_argument("--ways", type=int, help="classes per test episode (default: config; "
                                                   "writes eval-...-ways<N>.json)")
    evaluate.add_argument("--checkpoint", choices=["last", "best"], default="last",
                          help="the last checkpoint (default) or the best on validation (a "
                               "run trained with train.keep_best; writes eval-...-best.json)")
    evaluate.set_defaults(func=cmd_eval)

    report = commands.add_parser(
        "report", help="table of runs: mean ± 95%% CI across seeds (markdown and JSON)",
        description="Group runs by config keys and give each group's test metric as mean ± "
                    "Student-t 95%% CI over its runs (seeds); a group of one run shows its "
                    "interval over test episodes.")
    report.add_argument("run_dirs", nargs="+", metavar="run_dir",
                        help="run directories, or a directory holding runs (train --seeds)")
    report.add_argument("--by", help="comma-separated config keys to group by: a section "
                                     "(algorithm = algorithm.name) or a dotted key "
                                     "(algorithm.inner_lr); default: every key on which the "
                                     "runs differ, apart from seeds")
    report.add_argument("--eval", default="eval",
                        help="which evaluation to read: eval (eval.json, default), eval-val, "
                             "eval-test-support10, ...")
    report.add_argument("--out", help="also write the table to OUT.md and OUT.json "
                                      "(atomically; a suffix given is replaced)")
    report.set_defaults(func=cmd_report)

    plot = commands.add_parser("plot", help="PNG of training curves, or per-group results")
    plot.add_argument("run_dirs", nargs="+", metavar="run_dir")
    kinds = plot.add_mutually_exclusive_group()
    kinds.add_argument("--groups", action="store_true",
                       help="compare the runs' per-group eval.json results (bars with 95%% CI)")
    kinds.add_argument("--support-sizes", action="store_true",
                       help="average and worst-group metric against the test batch size "
                            "(the runs' eval-test-support<N>.json)")
    kinds.add_argument("--predictive", action="store_true",
                       help="predictions with uncertainty bands on test tasks (neural processes)")
    plot.add_argument("--data", nargs="*", default=[], metavar="KEY=VALUE",
                      help="with --predictive: change the test data (data.amplitude=[5,10])")
    plot.add_argument("--contexts", nargs="+", type=int, default=[3, 10], metavar="K",
                      help="with --predictive: context (support) sizes, one column each")
    plot.add_argument("--tasks", type=int, default=1,
                      help="with --predictive: test tasks per context size (seeds 0, 1, ...)")
    plot.add_argument("--samples", type=int, default=5,
                      help="with --predictive: functions drawn per panel by models that draw "
                           "whole functions (NP, ANP, PLATIPUS, ABML)")
    kinds.add_argument("--optimizers", action="store_true",
                       help="the learned-optimizer comparison from the CURVES.json that "
                            "benchmarks/learned_optimizer.py writes (given instead of a run)")
    kinds.add_argument("--presentations", action="store_true",
                       help="accuracy per presentation number of each run's presentations.json "
                            "(benchmarks/mann_presentations.py)")
    kinds.add_argument("--stream", action="store_true",
                       help="online runs: examples to threshold, accuracy after a small budget "
                            "and cumulative loss against the task index, seed bands (each "
                            "run's stream.json)")
    kinds.add_argument("--reliability", action="store_true",
                       help="reliability diagrams of classification runs: accuracy per "
                            "confidence bin on test episodes (the ECE's bins)")
    kinds.add_argument("--coverage", action="store_true",
                       help="regression runs: empirical against nominal coverage of the "
                            "central predictive intervals on test tasks")
    plot.add_argument("--seeds", action="store_true",
                      help="curves of several runs of one config (seeds): their mean with a "
                           "Student-t 95%% band at the steps every run logged")
    plot.add_argument("--x", default="step", metavar="KEY",
                      help="the curves' x axis: step (default) or a logged key, e.g. "
                           "env_steps (meta-RL)")
    plot.add_argument("--metrics", nargs="+", default=None, metavar="KEY",
                      help="the curves drawn (default: every logged metric)")
    kinds.add_argument("--adaptation", action="store_true",
                       help="meta-RL: meta-test return after each inner step or in each "
                            "episode of a trial (eval JSON files or run directories; several: "
                            "their mean with a 95%% interval)")
    plot.add_argument("--episodes", type=int, default=100,
                      help="with --reliability/--coverage: test tasks scored per run")
    plot.add_argument("--out", help="PNG path (default RUN_DIR/curves.png, or "
                                    "FIRST_RUN/groups.png, FIRST_RUN/support_sizes.png)")
    plot.set_defaults(func=cmd_plot)

    listing = commands.add_parser("list", help="algorithms, datasets and shipped configs")
    listing.set_defaults(func=cmd_list)

    from metalab.cli.data import add_subparser

    add_subparser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "train" and all("=" in item for item in extra):
        args.overrides += extra  # overrides after an option: `train RUN --resume key=value`
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"metalab {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
