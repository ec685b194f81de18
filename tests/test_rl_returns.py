"""Returns-to-go, GAE and the linear feature baseline against hand computations."""

import numpy as np
import pytest
import torch

from metalab.rl import (
    EpisodeBatch,
    discounted_returns,
    fit_linear_baseline,
    gae,
    linear_features,
    standardized_advantages,
)

REWARDS = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
VALUES = torch.tensor([[0.5, 1.0, 2.0]], dtype=torch.float64)
FULL = torch.ones(1, 3, dtype=torch.float64)
ENDS_AFTER_TWO = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)


def test_discounted_returns_by_hand():
    # gamma = 0.5: G2 = 3, G1 = 2 + 0.5 * 3 = 3.5, G0 = 1 + 0.5 * 3.5 = 2.75
    expected = torch.tensor([[2.75, 3.5, 3.0]], dtype=torch.float64)
    assert torch.allclose(discounted_returns(REWARDS, FULL, 0.5), expected)


def test_discounted_returns_ignore_rewards_after_the_end():
    # the third reward is after the end: G1 = 2, G0 = 1 + 0.5 * 2 = 2
    expected = torch.tensor([[2.0, 2.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(discounted_returns(REWARDS, ENDS_AFTER_TWO, 0.5), expected)


def test_gae_by_hand():
    # gamma = lam = 0.5: deltas d2 = 3 - 2 = 1, d1 = 2 + 0.5 * 2 - 1 = 2,
    # d0 = 1 + 0.5 * 1 - 0.5 = 1; A2 = 1, A1 = 2 + 0.25 * 1 = 2.25, A0 = 1 + 0.25 * 2.25
    expected = torch.tensor([[1.5625, 2.25, 1.0]], dtype=torch.float64)
    assert torch.allclose(gae(REWARDS, VALUES, FULL, 0.5, 0.5), expected)


def test_gae_stops_at_the_end_of_an_episode():
    # d1 = 2 + 0 - 1 = 1 (no value after the end), d0 = 1 + 0.5 * 1 - 0.5 = 1;
    # A1 = 1, A0 = 1 + 0.25 * 1 = 1.25, A2 = 0
    expected = torch.tensor([[1.25, 1.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(gae(REWARDS, VALUES, ENDS_AFTER_TWO, 0.5, 0.5), expected)


def test_gae_with_lambda_one_is_return_minus_value_and_zero_is_td_error():
    returns = torch.tensor([[2.75, 3.5, 3.0]], dtype=torch.float64)
    assert torch.allclose(gae(REWARDS, VALUES, FULL, 0.5, 1.0), returns - VALUES)
    td = torch.tensor([[1.0, 2.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(gae(REWARDS, VALUES, FULL, 0.5, 0.0), td)


def test_returns_and_gae_name_a_bad_argument():
    with pytest.raises(ValueError, match="masks must have the shape of rewards"):
        discounted_returns(REWARDS, FULL[:, :2], 0.5)
    with pytest.raises(ValueError, match="values must have the shape of rewards"):
        gae(REWARDS, VALUES[:, :2], FULL, 0.5, 0.5)
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns(REWARDS, FULL, -0.1)


def hand_features(observation: np.ndarray, t: int) -> list[float]:
    o = np.clip(observation, -10, 10)
    s = t / 100.0
    return [*o, *(o**2), s, s**2, s**3, 1.0]


def test_standardized_advantages_by_hand_over_the_batch_and_per_task():
    advantages = torch.tensor([[[1.0, 3.0, 100.0]], [[2.0, 4.0, 6.0]]], dtype=torch.float64)
    masks = torch.tensor([[[1.0, 1.0, 0.0]], [[1.0, 1.0, 1.0]]], dtype=torch.float64)
    # the whole batch: valid values 1, 3, 2, 4, 6 -> mean 3.2, biased variance 2.96
    mean, std = 3.2, 2.96 ** 0.5
    pooled = [[[(1 - mean) / std, (3 - mean) / std, 0.0]],
              [[(2 - mean) / std, (4 - mean) / std, (6 - mean) / std]]]
    assert torch.allclose(standardized_advantages(advantages, masks, eps=0.0),
                          torch.tensor(pooled, dtype=torch.float64))
    # per task: task 0 has mean 2, std 1; task 1 mean 4, std sqrt(8/3)
    std1 = (8 / 3) ** 0.5
    per_task = [[[-1.0, 1.0, 0.0]], [[-2 / std1, 0.0, 2 / std1]]]
    assert torch.allclose(standardized_advantages(advantages, masks, dims=(1, 2), eps=0.0),
                          torch.tensor(per_task, dtype=torch.float64))
    with pytest.raises(ValueError, match="masks must have the shape of advantages"):
        standardized_advantages(advantages, masks[:, :, :2])


def test_linear_baseline_fit_is_the_regularised_least_squares_solution():
    generator = torch.Generator().manual_seed(0)
    tasks, episodes, horizon, reg = 2, 3, 6, 1e-2
    observations = torch.randn(tasks, episodes, horizon, 2, generator=generator,
                               dtype=torch.float64) * 4
    returns = torch.randn(tasks, episodes, horizon, generator=generator, dtype=torch.float64)
    masks = torch.ones(tasks, episodes, horizon, dtype=torch.float64)
    masks[0, 1, 4:] = 0.0
    masks[1, 2, 2:] = 0.0
    coefficients = fit_linear_baseline(linear_features(observations), returns, masks, reg)
    for task in range(tasks):
        rows, targets = [], []
        for e in range(episodes):
            for t in range(horizon):
                if masks[task, e, t] > 0:
                    rows.append(hand_features(observations[task, e, t].numpy(), t))
                    targets.append(returns[task, e, t].item())
        x, y = np.array(rows), np.array(targets)
        # ridge regression as ordinary least squares on [X; sqrt(reg) I] c = [y; 0]
        augmented_x = np.vstack([x, np.sqrt(reg) * np.eye(x.shape[1])])
        augmented_y = np.concatenate([y, np.zeros(x.shape[1])])
        expected = np.linalg.lstsq(augmented_x, augmented_y, rcond=None)[0]
        np.testing.assert_allclose(coefficients[task].numpy(), expected, rtol=1e-7, atol=1e-9)


def test_linear_baseline_names_a_bad_argument():
    features = torch.zeros(1, 2, 3, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="features must have shape"):
        fit_linear_baseline(features, torch.zeros(1, 2, 4), torch.ones(1, 2, 4))


def test_episode_batch_names_a_mismatched_field():
    steps = (2, 3, 4)
    fields = dict(observations=torch.zeros(*steps, 2), actions=torch.zeros(*steps, 2),
                  rewards=torch.zeros(steps), log_probs=torch.zeros(steps),
                  masks=torch.ones(steps), task_ids=torch.arange(2))
    batch = EpisodeBatch(**fields)
    assert batch.total_returns().shape == (2, 3)
    with pytest.raises(ValueError, match="masks must have the shape of rewards"):
        EpisodeBatch(**{**fields, "masks": torch.ones(2, 3, 5)})
    with pytest.raises(ValueError, match="actions must have shape"):
        EpisodeBatch(**{**fields, "actions": torch.zeros(2, 4, 4, 2)})
    with pytest.raises(ValueError, match="task_ids must have shape"):
        EpisodeBatch(**{**fields, "task_ids": torch.arange(3)})
