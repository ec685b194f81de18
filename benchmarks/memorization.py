"""Meta-learning without memorization (Yin et al., ICLR 2020): MAML vs MR-MAML(W) vs MR-MAML(A)
on two non-mutually-exclusive task families, with the support-swap diagnostic.

Families (``metalab.tasks.memorization``):

- ``sinusoid``: the paper's non-mutually-exclusive sinusoid (one-hot amplitude index in x,
  discrete amplitudes at meta-training, continuous at meta-test, 5 support points and a
  200-point grid at meta-test, 100 SGD steps of lr 0.01 at meta-test, as the authors'
  notebook);
- ``pose``: `GlyphPose`, rotation relative to a per-character canonical orientation on the
  embedded glyphs (50 meta-training characters from the train split, meta-test on every
  character of the disjoint test split).

For every method and seed: meta-train with `Trainer`, report the meta-test MSE
(`Evaluator`) and the support-swap diagnostic (`support_swap_loss`: query MSE after adapting
to the task's own support set vs another task's) on meta-training and meta-test tasks.
Across seeds: mean and Student-t 95% interval of the per-seed means.

    OMP_NUM_THREADS=1 python benchmarks/memorization.py             # full run, ~40 min
    OMP_NUM_THREADS=1 python benchmarks/memorization.py --smoke     # a few seconds

The authors' MR-MAML(W) notebook configuration (meta-batch 1 x 15000 steps, sigma pinned at
1.19e-7, a new Adam at every step, its initialisation):

    OMP_NUM_THREADS=1 python benchmarks/memorization.py --families sinusoid \
        --methods "MR-MAML(W)" --seeds 2 --out /tmp/notebook_w.json --set \
        sinusoid.tasks_per_batch=1 sinusoid.steps=15000 sinusoid.w_sigma=notebook \
        sinusoid.init=notebook sinusoid.optimizer=adam_per_step
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from metalab import datasets
from metalab.algorithms import ANIL, MAML, MetaLearner
from metalab.algorithms.memorization import support_swap_loss
from metalab.algorithms.mr_maml import FLOAT32_EPS, MRMAMLA, MRMAMLW, BodyHead
from metalab.nn import MLP
from metalab.tasks import TaskSource
from metalab.tasks.memorization import (
    GlyphPose,
    NonMutuallyExclusiveSinusoid,
    check_disjoint_characters,
)
from metalab.train import Evaluator, Trainer
from metalab.train.report import format_plain, over_seeds, write_json

RESULTS = Path(__file__).resolve().parent / "results" / "memorization.json"
PAPER = {  # the issue's reference numbers (authors' notebook; paper's pose table)
    "sinusoid": {"MAML": 0.515, "MR-MAML(W)": 0.162, "MR-MAML(A)": 0.150},
    "pose": {"MAML": 5.39, "MR-MAML(W)": 2.26},
}
TEST_SEED, SWAP_TRAIN_SEED, SWAP_GENERATOR_SEED = 10_000, 20_000, 30_000


@dataclass(frozen=True)
class Settings:
    """Meta-training and evaluation settings of one family."""

    steps: int
    tasks_per_batch: int
    meta_lr: float
    inner_lr: float
    inner_steps: int
    eval_inner_steps: int
    beta_w: float
    beta_a: float
    test_tasks: int
    swap_tasks: int
    eval_batch: int = 25
    # Opt-in notebook options (``--set sinusoid.KEY=VALUE``); the defaults are unchanged:
    # w_sigma: "exp" (sigma = exp(s), s from -6) or "notebook" (sigma = float32 eps +
    #   softplus(rho), rho from -50: TFP's parametrization, sigma stays at 1.19e-7);
    # init: "torch" (PyTorch defaults) or "notebook" (sinusoid nets only: Bayesian-layer
    #   kernels and biases ~ N(0, 0.1^2), other layers Glorot-uniform kernels, zero biases);
    # optimizer: "adam" or "adam_per_step" (the MR-MAML(W) notebook builds a new keras Adam
    #   at every step, see `AdamPerStep`).
    w_sigma: str = "exp"
    init: str = "torch"
    optimizer: str = "adam"


SETTINGS = {
    # Notebook: meta-batch 1 x 15000 steps (10000 for (A)), Adam 1e-3, inner lr 0.01, 1 step;
    # here meta-batch 5 x 5000 steps (25000 tasks), the rest as the notebook.
    "sinusoid": Settings(steps=5000, tasks_per_batch=5, meta_lr=1e-3, inner_lr=0.01,
                         inner_steps=1, eval_inner_steps=100, beta_w=5e-5, beta_a=5.0,
                         test_tasks=300, swap_tasks=100),
    # Pose code: meta-batch 10, inner lr 0.002, 5 inner steps (20 at meta-test), 30000 steps,
    # beta 1e-3; here 1500 steps.
    "pose": Settings(steps=1500, tasks_per_batch=10, meta_lr=1e-3, inner_lr=0.002,
                     inner_steps=5, eval_inner_steps=20, beta_w=1e-3, beta_a=1.0,
                     test_tasks=300, swap_tasks=100),
}


# -- models and learners ----------------------------------------------------------------
class AdamPerStep(torch.optim.Optimizer):
    """Adam whose state is new at every step, as ``keras.optimizers.Adam(lr).apply_gradients``
    called inside the training loop (the authors' MR-MAML(W) sinusoid notebook).

    With zero moments the first Adam step of keras (TF 2.0) is
    ``lr * g / (|g| + eps / sqrt(1 - beta2))``: nearly ``lr * sign(g)`` for every entry with
    ``|g|`` above ``3.2e-6``, however small the gradient (e.g. a weight decay's).
    """

    def __init__(self, params, lr: float = 1e-3, eps: float = 1e-7, beta2: float = 0.999):
        super().__init__(params, dict(lr=lr, eps=eps, beta2=beta2))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            floor = group["eps"] / math.sqrt(1.0 - group["beta2"])
            for p in group["params"]:
                if p.grad is not None:
                    p.addcdiv_(p.grad, p.grad.abs() + floor, value=-group["lr"])
        return loss


def notebook_init(module: nn.Module, bayesian: bool = False) -> nn.Module:
    """The notebook's initialisation of its linear layers: keras ``Dense`` (Glorot-uniform
    kernel, zero bias) or, ``bayesian``, TFP ``DenseReparameterization`` (kernel mean and the
    deterministic bias ~ N(0, 0.1^2))."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            if bayesian:
                nn.init.normal_(layer.weight, std=0.1)
                nn.init.normal_(layer.bias, std=0.1)
            else:
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
    return module


def sinusoid_learners(s: Settings) -> dict[str, Callable[[], MetaLearner]]:
    """The notebook's networks: MAML adapts all of 21-40-40-1; the MR variants encode x
    (W: 21-100-5 with Gaussian kernels; A: 21-80-(5 means, 5 scales)) and adapt 5-40-40-1."""
    inner = dict(inner_lr=s.inner_lr, inner_steps=s.inner_steps,
                 eval_inner_steps=s.eval_inner_steps, loss="mse")
    if s.init not in ("torch", "notebook"):
        raise ValueError(f"init must be 'torch' or 'notebook', got {s.init!r}")
    if s.w_sigma not in ("exp", "notebook"):
        raise ValueError(f"w_sigma must be 'exp' or 'notebook', got {s.w_sigma!r}")

    def net(module: nn.Module, bayesian: bool = False) -> nn.Module:
        return notebook_init(module, bayesian) if s.init == "notebook" else module

    sigma = (dict(sigma_transform="softplus", init_rho=-50.0, sigma_floor=FLOAT32_EPS)
             if s.w_sigma == "notebook" else {})
    return {
        "MAML": lambda: MAML(net(MLP(21, (40, 40), 1)), **inner),
        "ANIL (MR net, beta=0)": lambda: ANIL(BodyHead(net(MLP(21, (100,), 5), True),
                                                       net(MLP(5, (40, 40), 1))), **inner),
        "MR-MAML(W)": lambda: MRMAMLW(BodyHead(net(MLP(21, (100,), 5), True),
                                               net(MLP(5, (40, 40), 1))),
                                      beta=s.beta_w, **sigma, **inner),
        "MR-MAML(A)": lambda: MRMAMLA(BodyHead(net(MLP(21, (80,), 10)),
                                               net(MLP(5, (40, 40), 1))),
                                      beta=s.beta_a, **inner),
    }


def pose_encoder(codes: int) -> nn.Sequential:
    """28x28 image -> 2x2 average pool -> three stride-2 3x3 convolutions -> ``codes``."""
    return nn.Sequential(
        nn.AvgPool2d(2),
        nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 2 * 2, codes),
    )


def pose_learners(s: Settings) -> dict[str, Callable[[], MetaLearner]]:
    """A convolutional encoder to a 32-d code and an adapted 32-64-1 head for every method.

    The baseline is MAML with the head adapted (ANIL: the same network and inner loop as the
    MR variants, no regularizer); MAML through the whole conv net took 0.75 s per
    meta-batch here, too slow for the budget.
    """
    inner = dict(inner_lr=s.inner_lr, inner_steps=s.inner_steps,
                 eval_inner_steps=s.eval_inner_steps, loss="mse")
    return {
        "MAML (head adapted)": lambda: ANIL(BodyHead(pose_encoder(32), MLP(32, (64,), 1)),
                                            **inner),
        "MR-MAML(W)": lambda: MRMAMLW(BodyHead(pose_encoder(32), MLP(32, (64,), 1)),
                                      beta=s.beta_w, **inner),
        "MR-MAML(A)": lambda: MRMAMLA(BodyHead(pose_encoder(64), MLP(32, (64,), 1)),
                                      beta=s.beta_a, **inner),
    }


# -- task sources ---------------------------------------------------------------------------
@dataclass
class Family:
    learners: dict[str, Callable[[], MetaLearner]]
    train: Callable[[int, int], TaskSource]  # (tasks_per_batch, seed) -> source
    test: Callable[[int, int], TaskSource]


def sinusoid_family(s: Settings) -> Family:
    return Family(
        sinusoid_learners(s),
        lambda tasks, seed: NonMutuallyExclusiveSinusoid("train", tasks_per_batch=tasks,
                                                         seed=seed),
        lambda tasks, seed: NonMutuallyExclusiveSinusoid("test", tasks_per_batch=tasks,
                                                         seed=seed),
    )


def pose_family(s: Settings, characters: int = 50) -> Family:
    train_set, test_set = datasets.build("glyphs", "train"), datasets.build("glyphs", "test")
    check_disjoint_characters(GlyphPose(train_set, characters=characters),
                              GlyphPose(test_set))
    return Family(
        pose_learners(s),
        lambda tasks, seed: GlyphPose(train_set, tasks_per_batch=tasks, characters=characters,
                                      seed=seed),
        lambda tasks, seed: GlyphPose(test_set, tasks_per_batch=tasks, seed=seed),
    )


# -- one run ------------------------------------------------------------------------------
@contextmanager
def vmapped(learner: MetaLearner):
    """Evaluate MAML-type learners with ``strategy="vmap"`` (same numbers, faster on CPU)."""
    previous = getattr(learner, "strategy", None)
    if previous is not None:
        learner.strategy = "vmap"
    try:
        yield learner
    finally:
        if previous is not None:
            learner.strategy = previous


def swap_diagnostic(learner: MetaLearner, source: TaskSource, tasks: int) -> dict[str, float]:
    """Mean query MSE with the own and with a swapped support set over ``tasks`` tasks."""
    generator = torch.Generator().manual_seed(SWAP_GENERATOR_SEED)
    normal, swapped, seen = [], [], 0
    while seen < tasks:
        result = support_swap_loss(learner, source.sample(), generator)
        normal.append(result.normal)
        swapped.append(result.swapped)
        seen += len(result.normal)
    own, other = torch.cat(normal)[:tasks].double(), torch.cat(swapped)[:tasks].double()
    return {"own_support": own.mean().item(), "swapped_support": other.mean().item(),
            "ratio": (other.mean() / own.mean()).item()}


def weight_noise(learner: MetaLearner) -> dict | None:
    """For MR-MAML(W): median sigma and median |mu| of the stochastic weights, and the KL."""
    if not isinstance(learner, MRMAMLW):
        return None
    sigma = torch.cat([s.detach().flatten() for s in learner.sigmas().values()])
    body = dict(learner.model.body.named_parameters())
    mean = torch.cat([body[n].detach().abs().flatten() for n in learner.stochastic_names])
    return {"median_sigma": sigma.median().item(), "median_abs_mu": mean.median().item(),
            "kl": learner.kl().item()}


def last_train_record(run_dir: Path) -> dict:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    train = [json.loads(line) for line in lines if '"split": "train"' in line]
    return train[-1] if train else {}


def run_one(family: Family, s: Settings, name: str, seed: int, work: Path) -> dict:
    torch.manual_seed(seed)
    learner = family.learners[name]()
    run_dir = work / f"{name.replace(' ', '_').replace('/', '_')}-seed{seed}"
    started, cpu_started = time.perf_counter(), time.process_time()
    trainer = Trainer(learner, family.train(s.tasks_per_batch, seed), run_dir, steps=s.steps,
                      lr=s.meta_lr, progress=False, seed=seed,
                      log_every=max(1, s.steps // 20), checkpoint_every=s.steps)
    if s.optimizer == "adam_per_step":
        trainer.optimizer = AdamPerStep(learner.parameters(), lr=s.meta_lr)
    elif s.optimizer != "adam":
        raise ValueError(f"optimizer must be 'adam' or 'adam_per_step', got {s.optimizer!r}")
    trainer.fit()
    train_seconds = time.perf_counter() - started
    torch.manual_seed(TEST_SEED)  # the draws of stochastic learners at meta-test
    with vmapped(learner):
        test = Evaluator(s.test_tasks).evaluate(learner, family.test(s.eval_batch, TEST_SEED))
        swap_train = swap_diagnostic(learner, family.train(s.eval_batch, SWAP_TRAIN_SEED),
                                     s.swap_tasks)
        swap_test = swap_diagnostic(learner, family.test(s.eval_batch, TEST_SEED),
                                    s.swap_tasks)
    final = last_train_record(run_dir)
    return {"method": name, "seed": seed, "test_mse": test["mean"], "test_ci95": test["ci95"],
            "test_tasks": test["episodes"], "swap_train": swap_train, "swap_test": swap_test,
            "final_train_loss": final.get("loss"), "final_train_mse": final.get("mse"),
            "weight_noise": weight_noise(learner),
            "train_seconds": round(train_seconds, 1),
            "eval_seconds": round(time.perf_counter() - started - train_seconds, 1),
            "cpu_seconds": round(time.process_time() - cpu_started, 1)}


# -- summaries ----------------------------------------------------------------------------
def summarize(runs: list[dict]) -> dict[str, dict]:
    summary: dict[str, dict] = {}
    for name in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == name]

        def interval(get, rows=mine):
            seeds = over_seeds([get(r) for r in rows])  # Student-t over seeds
            return {"mean": seeds["mean"], "ci95": seeds["ci95"]}

        summary[name] = {
            "test_mse": interval(lambda r: r["test_mse"]),
            "per_seed_test_mse": [r["test_mse"] for r in mine],
            **{f"{split}_{key}": interval(lambda r, s=split, k=key: r[f"swap_{s}"][k])
               for split in ("train", "test")
               for key in ("own_support", "swapped_support", "ratio")},
        }
    return summary


def markdown(family: str, summary: dict[str, dict], s: Settings, seeds: int) -> str:
    paper = PAPER.get(family, {})
    lines = [
        f"### {family}: meta-test MSE and support swap ({seeds} seeds, {s.steps} meta-steps of "
        f"{s.tasks_per_batch} tasks, {s.test_tasks} test tasks; mean ± 95% CI over seeds)",
        "",
        "| method | meta-test MSE | per seed | paper | train tasks: own support | "
        "swapped support | swapped/own | test tasks: own | swapped | swapped/own |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        reference = next((v for k, v in paper.items() if name.startswith(k)), None)
        swaps = [format_plain(row[f"{split}_{key}"]) for split in ("train", "test")
                 for key in ("own_support", "swapped_support", "ratio")]
        lines.append(
            f"| {name} | {format_plain(row['test_mse'])} | "
            f"{', '.join(f'{v:.3f}' for v in row['per_seed_test_mse'])} | "
            f"{'' if reference is None else reference} | " + " | ".join(swaps) + " |")
    if family == "pose":
        lines.append("\n(paper: Pascal 3D renders, targets azimuth / 2pi * 10 in [0, 10); here "
                     "glyph rotations in radians: the paper column is not in the same units)")
    return "\n".join(lines)


SMOKE = dict(steps=3, test_tasks=8, swap_tasks=4, eval_batch=4, eval_inner_steps=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=["sinusoid", "pose"],
                        choices=sorted(SETTINGS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="*", default=None,
                        help="run only methods whose name starts with one of these")
    parser.add_argument("--set", nargs="*", default=[], metavar="FAMILY.KEY=VALUE",
                        help="override a setting, e.g. pose.steps=500")
    parser.add_argument("--smoke", action="store_true", help="a few steps and tasks only")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)

    settings = dict(SETTINGS)
    if args.smoke:
        settings = {k: replace(v, **SMOKE) for k, v in settings.items()}
    for item in args.set:
        key, value = item.split("=", 1)
        family, field = key.split(".", 1)
        current = getattr(settings[family], field)
        settings[family] = replace(settings[family], **{field: type(current)(value)})

    payload = {"machine": platform.processor() or platform.machine(),
               "torch": torch.__version__, "threads": torch.get_num_threads(),
               "seeds": args.seeds, "families": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        for family_name in args.families:
            s = settings[family_name]
            family = sinusoid_family(s) if family_name == "sinusoid" else pose_family(s)
            names = [n for n in family.learners
                     if not args.methods or any(n.startswith(m) for m in args.methods)]
            runs = []
            for name in names:
                for seed in range(args.seeds):
                    run = run_one(family, s, name, seed, Path(work))
                    runs.append(run)
                    print(f"{family_name} {name} seed {seed}: test MSE {run['test_mse']:.3f}, "
                          f"swap train {run['swap_train']['own_support']:.3f} -> "
                          f"{run['swap_train']['swapped_support']:.3f}, "
                          f"{run['train_seconds']:.0f}+{run['eval_seconds']:.0f} s wall, "
                          f"{run['cpu_seconds']:.0f} s CPU", flush=True)
            summary = summarize(runs)
            payload["families"][family_name] = {"settings": asdict(s), "runs": runs,
                                                "summary": summary}
            print("\n" + markdown(family_name, summary, s, args.seeds) + "\n", flush=True)
    payload["seconds"] = round(time.perf_counter() - started, 1)
    payload["cpu_seconds"] = round(time.process_time(), 1)
    print(f"total {payload['seconds']:.0f} s wall, {payload['cpu_seconds']:.0f} s CPU")
    if not args.smoke or args.out != RESULTS:
        write_json(args.out, payload)


if __name__ == "__main__":
    main()
