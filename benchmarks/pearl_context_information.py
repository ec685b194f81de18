"""How much of the goal can PEARL's context encoder extract from the transitions a given
exploration behaviour yields on 2-D navigation? A supervised upper bound for the encoder
of `pearl-agent` (product of per-transition diagonal Gaussian factors, MLP 64-64, context
``(s, a, r, s')`` of 64 transitions drawn from one episode that starts at the origin):
train it to maximise ``log q(g | c)`` (``z_dim = 2``, z = the goal) on fresh goals, then
report the R^2 of its mean on 1,000 new goals (per coordinate).

Behaviours: the actions ``max_action * tanh(scale * N(0, I))``; ``scale = 0`` stays at the
origin (the goal-blind optimum on nav2d's square), small scales are a nearly converged
stochastic actor that stays put, ``scale = 3`` is close to uniform random actions.

    python benchmarks/pearl_context_information.py [--steps 600]
"""

from __future__ import annotations

import argparse
import json

import torch

from metalab.rl.navigation import PointNavigation
from metalab.rl.pearl_agent import PEARLAgent

FAMILIES = {"nav2d (square [-0.5, 0.5]^2, H 100)": dict(goals="square", goal_range=0.5,
                                                         horizon=100),
            "point robot (half circle r = 1, H 20)": dict(goals="half-circle", goal_range=1.0,
                                                           horizon=20)}


def contexts(env: PointNavigation, goals: torch.Tensor, scale: float,
             generator: torch.Generator, size: int = 64) -> dict[str, torch.Tensor]:
    """One episode per goal from the origin under the behaviour ``scale``; ``size`` of its
    transitions drawn uniformly (fields ``[T, size, ...]``)."""
    tasks = goals.shape[0]
    actions = torch.tanh(scale * torch.randn(tasks, env.horizon, 2, generator=generator))
    after = (env.max_action * actions).cumsum(dim=1)
    before = torch.cat([torch.zeros(tasks, 1, 2), after[:, :-1]], dim=1)
    rewards = -(after - goals[:, None]).norm(dim=-1)
    index = torch.randint(env.horizon, (tasks, size), generator=generator)
    pick = lambda v: torch.gather(v, 1, index[..., None].expand(-1, -1, 2))  # noqa: E731
    return {"observations": pick(before), "actions": pick(actions),
            "rewards": torch.gather(rewards, 1, index), "next_observations": pick(after)}


def information(options: dict, scale: float, steps: int, seed: int = 0) -> list[float]:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    env = PointNavigation(goal_tolerance=None, **options)
    agent = PEARLAgent(2, 2, z_dim=2, hidden=(8,), encoder_hidden=(64, 64))
    optimizer = torch.optim.Adam(agent.encoder.parameters(), lr=1e-3)
    for _ in range(steps):
        goals = env.sample_tasks(64, generator, dtype=torch.float32)
        mean, variance = agent.posterior(contexts(env, goals, scale, generator))
        nll = (0.5 * (goals - mean) ** 2 / variance + 0.5 * variance.log()).sum(-1).mean()
        optimizer.zero_grad()
        nll.backward()
        optimizer.step()
    goals = env.sample_tasks(1000, generator, dtype=torch.float32)
    with torch.no_grad():
        mean, _ = agent.posterior(contexts(env, goals, scale, generator))
    r2 = 1 - ((goals - mean) ** 2).sum(0) / ((goals - goals.mean(0)) ** 2).sum(0)
    return [round(v, 3) for v in r2.tolist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.1, 0.3, 1.0, 3.0])
    args = parser.parse_args()
    for name, options in FAMILIES.items():
        for scale in args.scales:
            print(json.dumps({"family": name, "scale": scale,
                              "r2": information(options, scale, args.steps)}), flush=True)


if __name__ == "__main__":
    main()
