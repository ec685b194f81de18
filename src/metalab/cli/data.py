"""``metalab data``: list, inspect, prepare and look at datasets.

- ``metalab data list``: the registered datasets and their splits;
- ``metalab data info NAME [--root DIR]``: file/checksum status and per-split counts;
- ``metalab data prepare NAME [--root DIR] [--download]``: fetch/verify files and build
  the decoded-image caches of every split;
- ``metalab data show NAME [--root DIR] --out FILE.png``: a grid of sampled episodes (one
  column per class, support rows above query rows) so a person can see the tasks.

``--option KEY=VALUE`` (repeatable) passes a keyword argument to the dataset, the value
read as YAML (``--option split_by=alphabet --option train_sources=[small1]``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

DOWNLOADABLE = ("omniglot",)


def add_subparser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``data`` command (with list/info/prepare/show) to a CLI's subparsers."""
    data = subparsers.add_parser("data", help="list, inspect, prepare and show datasets")
    actions = data.add_subparsers(dest="data_command", required=True)

    listing = actions.add_parser("list", help="registered datasets and their splits")
    listing.set_defaults(func=run)

    info = actions.add_parser("info", help="files, checksums and per-split counts")
    _dataset_arguments(info)
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=run)

    prepare = actions.add_parser("prepare", help="fetch/verify files and build the caches")
    _dataset_arguments(prepare)
    prepare.add_argument(
        "--download", action="store_true", help="fetch missing official archives (omniglot)"
    )
    prepare.set_defaults(func=run)

    show = actions.add_parser("show", help="PNG grid of sampled episodes")
    _dataset_arguments(show)
    show.add_argument("--out", required=True, help="PNG file to write")
    show.add_argument("--split", default=None, help="split to sample from (default: first)")
    show.add_argument("--ways", type=int, default=5)
    show.add_argument("--shots", type=int, default=1)
    show.add_argument("--queries", type=int, default=2)
    show.add_argument("--episodes", type=int, default=3)
    show.add_argument("--seed", type=int, default=0)
    show.set_defaults(func=run)
    return data


def _dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="dataset name (see `metalab data list`)")
    parser.add_argument("--root", default=None, help="folder with the dataset's files")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset keyword argument, value as YAML (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    """Handler of ``metalab data ...``; returns the process exit code."""
    handlers = {"list": cmd_list, "info": cmd_info, "prepare": cmd_prepare, "show": cmd_show}
    return handlers[args.data_command](args)


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` into keyword arguments, each value parsed as YAML."""
    import yaml

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--option must look like KEY=VALUE, got {pair!r}")
        options[key] = yaml.safe_load(value)
    return options


def cmd_list(args: argparse.Namespace) -> int:
    from metalab.datasets.registry import REGISTRY

    for name, entry in REGISTRY.items():
        files = "needs files" if entry.needs_files else "embedded"
        print(f"{name:14s} {files:11s} splits: {', '.join(entry.splits)}")
        print(f"{'':14s} {entry.description}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from metalab.datasets import DatasetFileError, build
    from metalab.datasets.registry import entry
    from metalab.datasets.status import file_status

    spec = entry(args.name)
    options = parse_options(args.option)
    report: dict[str, Any] = {"name": args.name, "files": file_status(args.name, args.root)}
    splits: dict[str, Any] = {}
    failed = False
    for split in spec.splits:
        try:
            dataset = build(args.name, split, root=args.root, **options)
        except DatasetFileError as exc:
            splits[split] = {"error": str(exc)}
            failed = True
            continue
        splits[split] = _summary(dataset)
    report["splits"] = splits
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_info(report)
    return 1 if failed else 0


def _summary(dataset: Any) -> dict[str, Any]:
    if hasattr(dataset, "summary"):
        summary = dataset.summary()
    else:
        summary = {"images": len(dataset), "classes": len(set(map(int, dataset.labels)))}
    alphabets = getattr(dataset, "alphabets", None)
    if alphabets:
        summary["alphabets"] = len(alphabets)
    return summary


def _print_info(report: dict[str, Any]) -> None:
    print(f"{report['name']}")
    print("files:")
    for path, state in report["files"]:
        print(f"  {path}: {state}")
    print("splits:")
    for split, summary in report["splits"].items():
        if "error" in summary:
            print(f"  {split}: unavailable: {summary['error']}")
            continue
        parts = [f"{summary['images']} images"]
        if "classes" in summary:
            parts.insert(0, f"{summary['classes']} classes")
        if "tasks" in summary:
            parts.insert(0, f"tasks {', '.join(summary['tasks'])} with "
                            f"{'/'.join(map(str, summary['classes_per_task']))} classes")
        if "groups" in summary:
            parts.append(f"{summary['groups_with_images']} of {summary['groups']} groups")
        if "alphabets" in summary:
            parts.insert(0, f"{summary['alphabets']} alphabets")
        if "image_shape" in summary:
            parts.append("shape " + "x".join(map(str, summary["image_shape"])))
        if summary.get("images_per_class"):
            low, high = summary["images_per_class"]
            parts.append(f"{low}" + (f"-{high}" if high != low else "") + " per class")
        print(f"  {split}: " + ", ".join(parts))


def cmd_prepare(args: argparse.Namespace) -> int:
    from metalab.datasets import build
    from metalab.datasets.registry import entry

    spec = entry(args.name)
    options = parse_options(args.option)
    if args.download:
        if args.name not in DOWNLOADABLE:
            raise ValueError(
                f"dataset {args.name!r} cannot be downloaded by metalab (only "
                f"{list(DOWNLOADABLE)}); place its files in --root (see `metalab data info`)"
            )
        options["download"] = True
    for split in spec.splits:
        dataset = build(args.name, split, root=args.root, **options)
        print(f"{args.name} {split}: {len(dataset)} images ready")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from metalab.datasets import build
    from metalab.datasets.registry import entry

    spec = entry(args.name)
    split = args.split or spec.splits[0]
    dataset = build(args.name, split, root=args.root, **parse_options(args.option))
    episodes = sample_episodes(
        dataset, args.ways, args.shots, args.queries, args.episodes, args.seed
    )
    title = f"{args.name} {split}: {args.ways}-way {args.shots}-shot, {args.queries} queries"
    draw_episodes(episodes, Path(args.out), title, args.ways)
    print(f"wrote {args.out}")
    return 0


def sample_episodes(
    dataset: Any, ways: int, shots: int, queries: int, episodes: int, seed: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``support_x, support_y, query_x, query_y`` with a leading episode dimension."""
    try:
        from metalab.tasks import EpisodeSampler
    except ImportError:
        return _sample_directly(dataset, ways, shots, queries, episodes, seed)
    batch = EpisodeSampler(dataset, ways, shots, queries, episodes, seed=seed).sample()
    return batch.support_x, batch.support_y, batch.query_x, batch.query_y


def _sample_directly(
    dataset: Any, ways: int, shots: int, queries: int, episodes: int, seed: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Episodes drawn from ``dataset.labels`` without the task layer."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(dataset.labels)
    classes = labels.unique()
    if len(classes) < ways:
        raise ValueError(f"ways={ways} but the split has {len(classes)} classes")
    out: list[list[Tensor]] = [[], [], [], []]
    for _ in range(episodes):
        chosen = classes[torch.randperm(len(classes), generator=generator)[:ways]]
        support, query = [], []
        for members in (torch.nonzero(labels == c).flatten() for c in chosen):
            if len(members) < shots + queries:
                raise ValueError(f"shots+queries={shots + queries} exceeds a class's images")
            picked = members[torch.randperm(len(members), generator=generator)]
            support.append(picked[:shots])
            query.append(picked[shots : shots + queries])
        s_idx, q_idx = torch.cat(support), torch.cat(query)
        out[0].append(torch.stack([dataset[i][0] for i in s_idx.tolist()]))
        out[1].append(torch.arange(ways).repeat_interleave(shots))
        out[2].append(torch.stack([dataset[i][0] for i in q_idx.tolist()]))
        out[3].append(torch.arange(ways).repeat_interleave(queries))
    return tuple(torch.stack(part) for part in out)  # type: ignore[return-value]


def draw_episodes(
    episodes: tuple[Tensor, Tensor, Tensor, Tensor], out: Path, title: str, ways: int
) -> None:
    """Save a grid: per episode, support rows then query rows; one column per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metalab.datasets.atomic import atomic_file

    rows = _episode_rows(*episodes, ways)
    fig, axes = plt.subplots(
        len(rows), ways, figsize=(1.2 * ways, 1.2 * len(rows) + 0.6), squeeze=False
    )
    for r, (row_name, images) in enumerate(rows):
        for c in range(ways):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if images[c] is not None:
                _imshow(ax, images[c])
            if c == 0:
                ax.set_ylabel(row_name, fontsize=7)
            if r == 0:
                ax.set_title(f"label {c}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _episode_rows(
    support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor, ways: int
) -> list[tuple[str, list[Tensor | None]]]:
    rows = []
    for t in range(support_x.shape[0]):
        for kind, xs, ys in (
            ("support", support_x[t], support_y[t]),
            ("query", query_x[t], query_y[t]),
        ):
            per_label = [xs[ys == c] for c in range(ways)]
            depth = max(len(images) for images in per_label)
            for k in range(depth):
                row = [images[k] if k < len(images) else None for images in per_label]
                rows.append((f"ep{t + 1} {kind}", row))
    return rows


def _imshow(ax: Any, image: Tensor) -> None:
    image = image.detach().float().cpu()
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray_r", vmin=0, vmax=1)
    else:
        ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
