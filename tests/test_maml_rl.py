"""MAML-RL / E-MAML as a MetaLearner: the outer surrogate's gradient against the policy
gradient written plainly (float64, per-step log-probability gradients, the inner step's
Jacobian by finite differences), E-MAML's exploration credit against the exact expectation
on an enumerated two-action bandit, the KL's direction, and the run machinery (trainer
facts, a bit-identical resume, the CLI's train and eval)."""

import itertools
import json

import pytest
import torch

from helpers import logged_records
from metalab.algorithms.maml_rl import MAMLRL
from metalab.cli.main import main, resolve_config_path
from metalab.rl import (
    EnvironmentTaskSource,
    GaussianMLPPolicy,
    Navigation2D,
    exploration_credit,
    gaussian_log_prob,
    inner_policy_gradient_step,
)
from metalab.rl.trpo import fisher_vector_product, flat, unflat
from metalab.train import load_config, train_run
from metalab.train.config import ConfigError

TINY = ["algorithm.inner_lr=0.05", "model.hidden=[8]", "data.horizon=6", "data.episodes=2",
        "train.meta_batch=3", "train.progress=false", "train.checkpoint_every=2",
        "eval.episodes=4", "eval.batch_size=2", "algorithm.fisher_tasks=2"]


def tiny_learner(inner_lr=0.3, **options):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden=(3,), init_log_std=-1.0).double()
    return MAMLRL(policy, inner_lr=inner_lr, **options).double()


def tiny_rollouts(learner, seed=0):
    source = EnvironmentTaskSource(Navigation2D(horizon=4, dtype="float64"), 2, 2, seed=seed)
    return learner.collect_rollouts(source.sample())


def surrogate_gradient(learner, rollouts):
    names = [n for n, _ in learner.policy.named_parameters()]
    params = dict(learner.policy.named_parameters())
    value, _ = learner.surrogate_and_kl(params, rollouts)
    return names, flat(torch.autograd.grad(value, list(params.values())))


def plain_policy_gradient(policy, params, observations, actions, advantages, masks):
    """``(1/E) sum_e sum_t grad log pi(a_t | s_t) A_t``, one step's gradient at a time."""
    total = torch.zeros(sum(p.numel() for p in params.values()), dtype=torch.float64)
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    episodes, horizon = masks.shape
    for e in range(episodes):
        for t in range(horizon):
            if masks[e, t] == 0:
                continue
            mean, log_std = torch.func.functional_call(policy, leaves, (observations[e, t],))
            log_prob = torch.distributions.Normal(mean, log_std.exp()).log_prob(
                actions[e, t]).sum()
            total += flat(torch.autograd.grad(log_prob, list(leaves.values()))) * advantages[e, t]
    return total / episodes


def test_surrogate_gradient_without_an_inner_step_is_the_plain_policy_gradient():
    learner = tiny_learner(inner_lr=0.0)
    rollouts = tiny_rollouts(learner)
    _, gradient = surrogate_gradient(learner, rollouts)
    post, params = rollouts.post, dict(learner.policy.named_parameters())
    plain = sum(plain_policy_gradient(learner.policy, params, post.observations[i],
                                      post.actions[i], rollouts.advantages[i], post.masks[i])
                for i in range(post.num_tasks)) / post.num_tasks
    torch.testing.assert_close(gradient, plain)


@pytest.mark.parametrize("estimator", ["dice", "naive"])
def test_surrogate_gradient_is_the_post_update_policy_gradient_through_the_inner_step(estimator):
    # grad L = mean_i J_i^T g'_i: g'_i the plain policy gradient at theta'_i, J_i the
    # inner step's Jacobian d theta'_i / d theta. The naive step is the sample path of the
    # update, so J_i is its central difference; DiCE's Jacobian adds the score term
    # grad log p grad log p^T R that no finite difference of the sampled update has (its
    # expectation is checked exactly in test_rl_policy_gradient.py), so J_i is autograd's.
    learner = tiny_learner(estimator=estimator)
    rollouts = tiny_rollouts(learner)
    names, gradient = surrogate_gradient(learner, rollouts)
    params = dict(learner.policy.named_parameters())
    start = flat(list(params.values())).detach()

    def adapted_flat(vector, task):
        values = dict(zip(names, [v.detach().requires_grad_(True)
                                  for v in unflat(vector, list(params.values()))], strict=True))
        adapted = learner.inner_step(values, rollouts.pre, create_graph=False)
        return flat([adapted[n][task] for n in names]).detach()

    def dice_jacobian(task):
        def step(vector):
            values = dict(zip(names, unflat(vector, list(params.values())), strict=True))
            adapted = learner.inner_step(values, rollouts.pre)
            return flat([adapted[n][task] for n in names])
        return torch.autograd.functional.jacobian(step, start.clone().requires_grad_(True))

    post, plain, eps = rollouts.post, torch.zeros_like(start), 1e-6
    for task in range(post.num_tasks):
        if estimator == "dice":
            jacobian = dice_jacobian(task)
        else:
            jacobian = torch.stack([
                (adapted_flat(start + eps * e, task) - adapted_flat(start - eps * e, task))
                / (2 * eps) for e in torch.eye(len(start), dtype=torch.float64)], dim=1)
        adapted = dict(zip(names, unflat(adapted_flat(start, task), list(params.values())),
                           strict=True))
        g = plain_policy_gradient(learner.policy, adapted, post.observations[task],
                                  post.actions[task], rollouts.advantages[task], post.masks[task])
        plain += jacobian.T @ g / post.num_tasks
    torch.testing.assert_close(gradient, plain, rtol=1e-5, atol=1e-7)


def test_kl_is_from_the_sampling_policy_to_the_new_one():
    learner = tiny_learner()
    rollouts = tiny_rollouts(learner)
    params = {n: p.detach() + 0.05 * torch.randn_like(p)
              for n, p in learner.policy.named_parameters()}
    params = {n: p.requires_grad_(True) for n, p in params.items()}
    _, kl = learner.surrogate_and_kl(params, rollouts, differentiable=False)
    adapted = learner.inner_step(params, rollouts.pre, create_graph=False)
    post, total = rollouts.post, 0.0
    for task in range(post.num_tasks):
        mean, log_std = torch.func.functional_call(
            learner.policy, {n: v[task] for n, v in adapted.items()}, (post.observations[task],))
        old = torch.distributions.Normal(rollouts.old_mean[task], rollouts.old_log_std[task].exp())
        new = torch.distributions.Normal(mean, log_std.exp())
        per_step = torch.distributions.kl_divergence(old, new).sum(-1)
        total += (per_step * post.masks[task]).sum() / post.masks[task].sum()
    torch.testing.assert_close(kl, total / post.num_tasks)
    assert kl > 0


def test_trpo_fisher_of_the_naive_step_is_the_hessian_of_the_kl_the_line_search_measures():
    # v^T F v from TRPO's Fisher-vector product against the line search's KL (values only,
    # differentiable=False) by a central second difference: KL(0) = 0 and grad KL(0) = 0,
    # so KL(eps v) + KL(-eps v) = eps^2 v^T H v + O(eps^4). The naive step is the sample
    # path of the update, so its graph is the function the line search evaluates (a KL
    # through a first-order or detached inner step would miss the inner Jacobian). DiCE's
    # graph is not (its second derivative adds the score term): docs/meta-rl.md, "Why the
    # TRPO steps were tiny", measures what that does on half-cheetah and nav2d.
    learner = tiny_learner(estimator="naive")
    rollouts = tiny_rollouts(learner)
    names = [n for n, _ in learner.policy.named_parameters()]
    leaves = list(learner.policy.parameters())
    _, kl = learner.surrogate_and_kl(dict(zip(names, leaves, strict=True)), rollouts)
    product = fisher_vector_product(kl, leaves)
    start = flat(leaves).detach()
    torch.manual_seed(1)
    direction = torch.randn(len(start), dtype=torch.float64)

    def line_search_kl(step):
        values = [v.requires_grad_(True) for v in unflat(start + step, leaves)]
        return learner.surrogate_and_kl(dict(zip(names, values, strict=True)), rollouts,
                                        differentiable=False)[1].item()

    eps = 1e-4
    second_difference = (line_search_kl(eps * direction)
                         + line_search_kl(-eps * direction)) / eps**2
    assert float(direction @ product(direction)) == pytest.approx(second_difference, rel=1e-4)


# -- E-MAML's credit on the two-action bandit (as tests/test_rl_policy_gradient.py) --------
REWARD = torch.tensor([1.0, 0.2], dtype=torch.float64)
THETA = torch.tensor([0.3, -0.2], dtype=torch.float64)
ALPHA = 0.7
BATCHES = list(itertools.product([0, 1], repeat=2))  # one task's two pre-update episodes


def probabilities(theta):
    return torch.softmax(theta, -1)


def expected_return(theta):
    return (probabilities(theta) * REWARD).sum()


def naive_step(theta, actions):
    index = torch.tensor(actions)
    return inner_policy_gradient_step(
        lambda p: torch.log_softmax(p["theta"], -1)[index].unsqueeze(-1), {"theta": theta},
        REWARD[index].unsqueeze(-1), torch.ones(2, 1, dtype=torch.float64), step_size=ALPHA,
        gamma=1.0, estimator="naive")["theta"]


def e_maml_objective(theta):
    """``E_tau[J(theta'(tau))]`` exactly: the sum over one task's pre-update batches."""
    p = probabilities(theta)
    return sum(p[a] * p[b] * expected_return(hand_step(theta, [a, b])) for a, b in BATCHES)


def hand_step(theta, actions):
    p = probabilities(theta)
    eye = torch.eye(2, dtype=torch.float64)
    return theta + ALPHA * sum(REWARD[a] * (eye[a] - p) for a in actions) / len(actions)


def expected_meta_gradient(credit):
    """Exact expectation, over the pre-update batches of two tasks (16 outcomes), of the
    gradient of ``mean_i J(theta'_i) + credit(S, R)`` with the sample-path (naive) step."""
    theta = THETA.clone().requires_grad_()
    p = probabilities(THETA)
    total = torch.zeros(2, dtype=torch.float64)
    for first, second in itertools.product(BATCHES, repeat=2):
        weight = p[first[0]] * p[first[1]] * p[second[0]] * p[second[1]]
        returns = torch.stack([expected_return(naive_step(theta, list(b)))
                               for b in (first, second)])
        log_probs = torch.stack([torch.log_softmax(theta, -1)[list(b)].sum()
                                 for b in (first, second)])
        objective = returns.mean() + credit(log_probs, returns)
        total += weight * torch.autograd.grad(objective, theta)[0]
    return total


def central_difference(function, x, eps=1e-6):
    return torch.stack([(function(x + eps * e) - function(x - eps * e)) / (2 * eps)
                        for e in torch.eye(len(x), dtype=torch.float64)])


def test_exploration_credit_makes_the_meta_gradient_exact_for_e_maml_objective():
    exact = central_difference(e_maml_objective, THETA)
    torch.testing.assert_close(expected_meta_gradient(exploration_credit), exact,
                               rtol=0, atol=1e-8)
    # without the credit (the public MAML-RL implementations) the estimate is biased
    assert (expected_meta_gradient(lambda s, r: 0.0) - exact).abs().max() > 1e-3

    def own_task_in_the_baseline(log_probs, returns):  # correlated with tau_i: biased
        box = torch.exp(log_probs - log_probs.detach())
        return ((box - 1) * (returns - returns.mean()).detach()).mean()

    assert (expected_meta_gradient(own_task_in_the_baseline) - exact).abs().max() > 1e-3


def test_exploration_credit_value_is_zero_and_its_gradient_by_hand():
    log_probs = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64, requires_grad=True)
    returns = torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64)
    value = exploration_credit(log_probs, returns)
    assert value.item() == 0.0
    (gradient,) = torch.autograd.grad(value, log_probs)
    leave_one_out = torch.tensor([1.5, 2.5, 2.0], dtype=torch.float64)
    torch.testing.assert_close(gradient, (returns - leave_one_out) / 3)


def test_options_that_do_not_go_together_are_named():
    policy = GaussianMLPPolicy(2, 2, hidden=(3,))
    with pytest.raises(ValueError, match="e_maml needs estimator='naive'"):
        MAMLRL(policy, e_maml=True)
    with pytest.raises(ValueError, match="normalize_advantages"):
        MAMLRL(policy, e_maml=True, estimator="naive", normalize_advantages=True)
    with pytest.raises(ValueError, match="outer_step"):
        MAMLRL(policy, outer_step="ppo")
    with pytest.raises(TypeError, match="environment tasks"):
        MAMLRL(policy).meta_backward(object())


def test_e_maml_surrogate_adds_the_credit_of_the_pre_update_episodes():
    plain = tiny_learner(estimator="naive")
    e_maml = tiny_learner(estimator="naive", e_maml=True)
    rollouts = tiny_rollouts(plain)
    _, without = surrogate_gradient(plain, rollouts)
    _, with_credit = surrogate_gradient(e_maml, rollouts)
    value = e_maml.surrogate_and_kl(dict(e_maml.policy.named_parameters()), rollouts)[0]
    assert value.item() == pytest.approx(
        plain.surrogate_and_kl(dict(plain.policy.named_parameters()), rollouts)[0].item())
    assert not torch.allclose(without, with_credit)


# -- the run machinery ---------------------------------------------------------------------
def train(tmp_path, name, *overrides, resume=False):
    out = tmp_path / name
    args = ["train", "maml-rl-nav2d", "--out", str(out), *TINY, *overrides]
    if resume:
        args = ["train", "--resume", str(out), "train.progress=false", *overrides]
    assert main(args) == 0
    return out


@pytest.mark.slow
def test_resume_is_bit_identical_and_eval_reports_returns_before_and_after(tmp_path):
    full = train(tmp_path, "full", "train.steps=4")
    part = train(tmp_path, "part", "train.steps=2")
    train(tmp_path, "part", "train.steps=4", resume=True)
    a = torch.load(full / "checkpoint.pt", weights_only=False)
    b = torch.load(part / "checkpoint.pt", weights_only=False)
    for name, value in a["learner"].items():
        assert torch.equal(value, b["learner"][name]), name
    assert logged_records(full) == logged_records(part)
    assert {"return", "return_pre", "kl", "improvement"} <= set(logged_records(full)[0])
    assert all(r["kl"] <= 0.01 for r in logged_records(full))
    assert main(["eval", str(full), "--episodes", "4"]) == 0
    result = json.loads((full / "eval.json").read_text())
    assert result["metric"] == "return" and result["episodes"] == 4
    assert {"mean", "ci95", "return_pre", "return_pre_ci95"} <= set(result)


def test_trpo_needs_the_optimizer_to_apply_its_step_unchanged(tmp_path):
    config = load_config(resolve_config_path("maml-rl-nav2d"),
                         [*TINY, "train.optimizer=adam", "train.lr=0.5"])
    with pytest.raises(ConfigError, match="train.optimizer: 'adam' .*train.lr: 0.5"):
        train_run(config, tmp_path / "adam")


def test_the_gradient_outer_step_trains_with_adam(tmp_path):
    out = train(tmp_path, "adam", "train.steps=2", "algorithm.outer_step=gradient",
                "train.optimizer=adam", "train.lr=0.01")
    assert len(logged_records(out)) == 2
    assert main(["eval", str(out), "--episodes", "2", "--inner-steps", "2"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["metric"] == "return" and result["inner_steps"] == 2
    assert result["return_pre"] != result["mean"]


def test_same_seed_same_rollouts_and_the_config_gets_the_policy_sizes(tmp_path):
    out = train(tmp_path, "sizes", "train.steps=1")
    config = (out / "config.yaml").read_text()
    assert "observation_dim: 2" in config and "action_dim: 2" in config
    learner = tiny_learner()
    first, second = tiny_rollouts(learner, seed=3), tiny_rollouts(learner, seed=3)
    assert torch.equal(first.post.actions, second.post.actions)
    assert not torch.equal(first.post.actions, tiny_rollouts(learner, seed=4).post.actions)


def test_log_probs_of_the_rollouts_are_the_policy_s(tmp_path):
    learner = tiny_learner()
    rollouts = tiny_rollouts(learner)
    pre = rollouts.pre
    mean, log_std = learner.policy(pre.observations)
    torch.testing.assert_close(pre.log_probs, gaussian_log_prob(pre.actions, mean, log_std))
