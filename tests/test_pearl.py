"""PEARL: the product-of-Gaussians posterior, its KL, SAC's critic target, the tanh-Gaussian
log-density and the Polyak update against references written plainly here (float64); which
loss trains which network; the buffers; seeding, a bit-identical resume through the
trainer, meta-test through the CLI, and the configuration errors."""

import json
import math

import pytest
import torch

from helpers import interrupted_then_resumed, logged_records
from metalab.algorithms.pearl import PEARL
from metalab.cli.main import main, resolve_config_path
from metalab.rl import EnvironmentTaskSource, Navigation2D
from metalab.rl.context_encoder import gaussian_product, standard_normal_kl
from metalab.rl.pearl_agent import PEARLAgent
from metalab.rl.replay import TaskReplay
from metalab.rl.sac import (
    QNetwork,
    TanhGaussianPolicy,
    polyak_update,
    soft_q_target,
    tanh_gaussian_log_prob,
)
from metalab.train import load_config, train_run
from metalab.train.config import ConfigError

D = torch.float64


# -- the posterior -------------------------------------------------------------------------
def test_product_of_gaussian_factors_is_the_closed_form_by_hand():
    means = torch.tensor([[1.0, -2.0], [3.0, 0.5], [-1.0, 4.0]], dtype=D)
    variances = torch.tensor([[0.5, 2.0], [1.0, 4.0], [2.0, 1.0]], dtype=D)
    mean, variance = gaussian_product(means, variances)
    # dimension 0: precisions 2, 1, 0.5 -> variance 1 / 3.5; mean (2*1 + 1*3 + 0.5*-1) / 3.5
    # dimension 1: precisions 0.5, 0.25, 1 -> variance 1 / 1.75; mean (-1 + 0.125 + 4) / 1.75
    assert torch.allclose(variance, torch.tensor([1 / 3.5, 1 / 1.75], dtype=D))
    assert torch.allclose(mean, torch.tensor([4.5 / 3.5, 3.125 / 1.75], dtype=D))
    single_mean, single_variance = gaussian_product(means[:1], variances[:1])
    assert torch.allclose(single_mean, means[0]) and torch.allclose(single_variance,
                                                                    variances[0])
    # a masked factor counts for nothing: the product of the other two
    masked = gaussian_product(means, variances, torch.tensor([1.0, 0.0, 1.0], dtype=D))
    kept = gaussian_product(means[[0, 2]], variances[[0, 2]])
    assert all(torch.allclose(a, b) for a, b in zip(masked, kept, strict=True))


def test_product_is_the_normalised_pointwise_product_of_the_densities():
    # an independent check of the formula: log N(x; mu, s2) = sum_n log N(x; mu_n, s2_n) + c
    means, variances = torch.tensor([[0.3], [-1.2]], dtype=D), torch.tensor([[0.7], [1.9]], dtype=D)
    mean, variance = gaussian_product(means, variances)
    x = torch.linspace(-3, 3, 7, dtype=D)

    def log_normal(m, s2):
        return -0.5 * (x - m) ** 2 / s2 - 0.5 * torch.log(2 * math.pi * s2)

    difference = (log_normal(means[0], variances[0]) + log_normal(means[1], variances[1])
                  - log_normal(mean, variance))
    assert torch.allclose(difference, difference[0].expand_as(difference))


def test_kl_to_the_standard_normal_is_the_closed_form():
    mean = torch.tensor([0.5, -1.0, 2.0], dtype=D)
    variance = torch.tensor([0.25, 1.0, 4.0], dtype=D)
    by_hand = sum(math.log(1 / math.sqrt(v)) + (v + m**2) / 2 - 0.5
                  for m, v in zip(mean.tolist(), variance.tolist(), strict=True))
    assert math.isclose(standard_normal_kl(mean, variance).item(), by_hand, rel_tol=1e-12)
    peer = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, variance.sqrt()),
        torch.distributions.Normal(torch.zeros(3, dtype=D), torch.ones(3, dtype=D))).sum()
    assert torch.allclose(standard_normal_kl(mean, variance), peer)


# -- SAC -----------------------------------------------------------------------------------
def test_soft_q_target_by_hand():
    rewards, dones = torch.tensor([1.0, -0.5], dtype=D), torch.tensor([0.0, 1.0], dtype=D)
    q1, q2 = torch.tensor([2.0, 7.0], dtype=D), torch.tensor([3.0, 1.0], dtype=D)
    log_probs = torch.tensor([-1.5, 0.3], dtype=D)
    target = soft_q_target(rewards, dones, q1, q2, log_probs, alpha=0.2, gamma=0.9)
    # first: 1 + 0.9 * (min(2, 3) - 0.2 * -1.5) = 1 + 0.9 * 2.3; second: terminal -> -0.5
    assert torch.allclose(target, torch.tensor([1 + 0.9 * 2.3, -0.5], dtype=D))


def test_tanh_gaussian_log_prob_is_the_change_of_variables_density():
    mean, log_std = torch.tensor([0.4, -0.3], dtype=D), torch.tensor([-0.2, 0.5], dtype=D)
    u = torch.tensor([1.1, -2.5], dtype=D)
    h = 1e-6  # p_a(a) = p_u(u) / |d tanh(u) / du|, the derivative by central differences
    jacobian = (torch.tanh(u + h) - torch.tanh(u - h)) / (2 * h)
    std = torch.exp(log_std)
    gaussian = torch.exp(-0.5 * ((u - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
    by_hand = torch.log(gaussian / jacobian).sum()
    assert torch.allclose(tanh_gaussian_log_prob(u, mean, log_std), by_hand, atol=1e-8)
    # and the density of a in (-1, 1) integrates to one (1-D, trapezoid on atanh's grid)
    a = torch.linspace(-1 + 1e-9, 1 - 1e-9, 200001, dtype=D)
    density = torch.exp(tanh_gaussian_log_prob(torch.atanh(a)[:, None], mean[:1],
                                               log_std[:1]))
    assert abs(torch.trapezoid(density, a).item() - 1.0) < 1e-4


def test_policy_sample_is_tanh_of_the_reparametrised_gaussian():
    torch.manual_seed(0)
    policy = TanhGaussianPolicy(2, 3, 1, hidden=[4]).to(D)
    s, z, noise = torch.randn(5, 2, dtype=D), torch.randn(5, 1, dtype=D), torch.randn(5, 3, dtype=D)
    action, log_prob = policy.sample(s, z, noise)
    mean, log_std = policy(s, z)
    u = mean + torch.exp(log_std) * noise
    assert torch.allclose(action, torch.tanh(u))
    assert torch.allclose(log_prob, tanh_gaussian_log_prob(u, mean, log_std))


def test_polyak_update_by_hand():
    torch.manual_seed(0)
    source, target = QNetwork(2, 1, 1, hidden=[3]).to(D), QNetwork(2, 1, 1, hidden=[3]).to(D)
    before = [p.clone() for p in target.parameters()]
    polyak_update(target, source, tau=0.1)
    for new, old, s in zip(target.parameters(), before, source.parameters(), strict=True):
        assert torch.allclose(new, 0.1 * s + 0.9 * old)


# -- the learner ---------------------------------------------------------------------------
def tiny_learner(seed=0, **options):
    torch.manual_seed(seed)
    agent = PEARLAgent(2, 2, z_dim=3, hidden=[8], encoder_hidden=[8])
    settings = dict(train_tasks=4, batch_size=6, context_size=5, replay_capacity=50,
                    initial_episodes=1, collect_every=2, collect_tasks=2)
    return PEARL(agent, **{**settings, **options}).to(D)


def tiny_batch(seed=7, tasks=3):
    family = Navigation2D(horizon=5, dtype="float64")
    return EnvironmentTaskSource(family, tasks, episodes=2, seed=seed).sample()


def test_encoder_learns_through_the_critic_loss_and_not_the_actor_loss():
    learner = tiny_learner()
    batch = tiny_batch()
    learner.meta_backward(batch)  # fills the buffers
    losses = learner.losses(torch.tensor([0, 2]), batch.generator())
    encoder = list(learner.agent.encoder.parameters())
    actor_grads = torch.autograd.grad(losses["actor"], encoder, allow_unused=True)
    assert all(g is None for g in actor_grads)
    critic_grads = torch.autograd.grad(losses["critic"], encoder, allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in critic_grads)
    # the critic loss is the two squared errors plus beta times the summed tasks' KL
    assert torch.allclose(losses["critic"], losses["q_error"] + 0.1 * losses["kl"])


def test_kl_term_is_summed_over_the_tasks_of_the_meta_batch():
    learner = tiny_learner()
    batch = tiny_batch()
    learner.meta_backward(batch)
    generator = batch.generator()
    indices = torch.tensor([1, 3])
    losses = learner.losses(indices, generator)
    context = learner.encoder_replay.sample(indices, learner.context_size,
                                            batch.generator())
    mean, variance = learner.agent.posterior(context)
    by_hand = sum(standard_normal_kl(mean[i], variance[i]) for i in range(2))
    assert torch.allclose(losses["kl"], by_hand)


def test_each_loss_writes_only_its_own_networks_gradients():
    learner = tiny_learner(learn_alpha=True)
    learner.meta_backward(tiny_batch())
    agent = learner.agent
    for module in (agent.encoder, agent.q1, agent.q2, agent.policy):
        assert all(p.grad is not None for p in module.parameters())
    assert learner.log_alpha.grad is not None
    for module in (agent.target_q1, agent.target_q2):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())


def test_collection_refreshes_the_encoder_buffer_and_appends_to_the_replay_buffer():
    learner = tiny_learner(prior_episodes=1, posterior_episodes=1, extra_posterior_episodes=2)
    batch = tiny_batch()
    learner.meta_backward(batch)  # initial episodes (1 x 5 steps per task), then a round
    sizes = learner.replay.sizes.clone()
    encoder_sizes = learner.encoder_replay.sizes.clone()
    # a collected task: 5 initial + (1 + 1 + 2) x 5; its encoder buffer: (1 + 1) x 5 only
    # (nav2d ends early only within 0.01 of the goal: not in 5 steps from the origin here)
    collected = sizes == 25
    assert collected.sum() == 2 and (sizes[~collected] == 5).all()
    assert (encoder_sizes[collected] == 10).all() and (encoder_sizes[~collected] == 5).all()
    assert learner.env_steps == 4 * 5 + 2 * 4 * 5


def test_replay_ring_buffer_overwrites_the_oldest_and_samples_only_stored_rows():
    replay = TaskReplay(2, 4, 1, 1, dtype=D)

    def rows(values):
        n = len(values)
        column = torch.tensor(values, dtype=D)[:, None]
        return {"observations": column, "actions": column, "rewards": column[:, 0],
                "next_observations": column, "dones": torch.zeros(n, dtype=D)}

    replay.add(0, rows([1, 2, 3]))
    replay.add(0, rows([4, 5]))
    assert replay.data["rewards"][0].tolist() == [5, 2, 3, 4] and replay.sizes[0] == 4
    replay.add(1, rows([9]))
    sample = replay.sample(torch.tensor([1]), 20, torch.Generator().manual_seed(0))
    assert (sample["rewards"] == 9).all()
    replay.clear(1)
    with pytest.raises(ValueError, match="no transitions"):
        replay.sample(torch.tensor([1]), 1)


def test_same_seed_same_rollouts_and_updates():
    results = []
    for _ in range(2):
        learner = tiny_learner()
        learner.meta_backward(tiny_batch())
        results.append(([p.grad.clone() for p in learner.agent.parameters()
                         if p.grad is not None], learner.replay.state_dict()))
    (grads_a, replay_a), (grads_b, replay_b) = results
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))
    assert all(torch.equal(replay_a["data"][k], replay_b["data"][k]) for k in replay_a["data"])
    other = tiny_learner()
    other.meta_backward(tiny_batch(seed=8))
    assert not torch.equal(other.replay.data["actions"], replay_a["data"]["actions"])


def test_meta_test_counts_only_the_valid_transitions_of_earlier_episodes():
    learner = tiny_learner(eval_episodes=3)
    batch = tiny_batch()
    returns = learner.meta_test(batch.family, batch.tasks, 2, batch.generator())
    assert returns.shape == (3, 2, 3)
    losses, metrics = learner.task_losses(batch, training=False)
    assert set(metrics) == {"return", "return_episode1", "return_episode2", "return_episode3"}
    assert torch.equal(losses, -metrics["return_episode3"])
    with pytest.raises(TypeError, match="meta_backward"):
        learner.task_losses(batch, training=True)


# -- configuration -------------------------------------------------------------------------
TINY = ["model.hidden=[8]", "model.encoder_hidden=[8]", "data.horizon=5", "data.episodes=2",
        "train.meta_batch=3", "train.progress=false", "train.checkpoint_every=3",
        "algorithm.train_tasks=4", "algorithm.batch_size=8", "algorithm.context_size=6",
        "algorithm.replay_capacity=60", "algorithm.collect_every=2",
        "algorithm.collect_tasks=2", "train.log_every=1", "eval.episodes=4",
        "eval.batch_size=2"]


@pytest.mark.slow  # 7 s: a run straight through, an interrupted and resumed one, an eval
def test_resume_is_bit_identical_and_eval_reports_the_adaptation_curve(tmp_path):
    config = load_config(resolve_config_path("pearl-nav2d"), [*TINY, "train.steps=7"])
    straight, resumed = interrupted_then_resumed(config, tmp_path, interrupt_at=5)
    a, b = straight.learner, resumed.learner
    for (name, value), other in zip(a.state_dict().items(), b.state_dict().values(),
                                    strict=True):
        if name.endswith("_extra_state"):
            continue
        assert torch.equal(value, other), name
    for buffer in ("replay", "encoder_replay"):
        first, second = getattr(a, buffer).state_dict(), getattr(b, buffer).state_dict()
        for key, value in first["data"].items():
            assert torch.equal(value, second["data"][key]), (buffer, key)
        assert torch.equal(first["sizes"], second["sizes"])
    assert a.env_steps == b.env_steps > 0 and a.gradient_steps == b.gradient_steps == 7

    assert logged_records(tmp_path / "straight") == logged_records(tmp_path / "broken")
    assert main(["eval", str(tmp_path / "straight")]) == 0
    result = json.loads((tmp_path / "straight" / "eval.json").read_text())
    assert result["metric"] == "return" and result["episodes"] == 4
    assert {"return_episode1", "return_episode2", "return_episode3"} <= set(result)


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.name=nav3d"], "nav3d"),
    (["model.z_dim=0"], "z_dim must be an integer >= 1"),
    (["train.meta_batch=5"], "train.meta_batch .*algorithm.train_tasks"),
    (["model.observation_dim=3"], "observation_dim"),
    (["algorithm.collect_tasks=9"], "collect_tasks must be at most train_tasks"),
])
def test_bad_configs_name_the_key(tmp_path, overrides, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        config = load_config(resolve_config_path("pearl-nav2d"),
                             [*TINY, "train.steps=1", *overrides])
        train_run(config, tmp_path / "bad")


def test_point_robot_config_trains_on_half_circle_goals_of_horizon_20(tmp_path):
    """`pearl-point-robot` (the paper's point robot): its training tasks lie on the upper
    unit half circle and its episodes are 20 steps with no early end (caught: the family
    options not reaching the environment, e.g. nav2d's square of goals)."""
    config = load_config(resolve_config_path("pearl-point-robot"),
                         [*TINY, "data.horizon=20", "train.steps=2",
                          "algorithm.initial_episodes=1"])
    learner = train_run(config, tmp_path / "run").learner
    goals = learner.task_set.double()
    assert torch.allclose(goals.norm(dim=-1), torch.ones(len(goals), dtype=D), atol=1e-6)
    assert (goals[:, 1] >= 0).all()
    # 4 tasks x 1 initial episode + 2 tasks x (2 prior + 2 extra posterior) episodes (one
    # collection round in 2 steps), each the full 20 steps
    assert learner.env_steps == 20 * (4 * 1 + 2 * 4)
