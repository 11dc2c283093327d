"""Candidate-scoring policies: equivariance, k-transfer, learning with SB3, save/load, bad spaces.

Most tests run on ``OutbrainRec-v0`` (its built-in synthetic data). The learning thresholds and the
exact k-transfer check use :class:`AlignedCandidatesEnv`, a tiny bandit whose optimum is known.
"""

import functools
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import BasePolicy

import recsys_gym  # noqa: F401  (registers OutbrainRec-v0)
from dadrl_sb3.common.candidate_policies import (
    CandidateActorCriticPolicy,
    CandidateDQNPolicy,
    check_candidate_spaces,
    transfer_candidate_policy,
)
from recsys_gym.evaluation import evaluate_one_plus_k

POLICY_CLASSES = [CandidateActorCriticPolicy, CandidateDQNPolicy]
PolicyT = TypeVar("PolicyT", bound=BasePolicy)

# Small budgets that learn the bandits below: gamma=0 because every step is an independent impression
TRAINING_SETUPS: dict[str, tuple[Any, type[BasePolicy], dict[str, Any]]] = {
    "A2C": (A2C, CandidateActorCriticPolicy, {"n_steps": 8, "learning_rate": 3e-3}),
    "PPO": (PPO, CandidateActorCriticPolicy, {"n_steps": 64, "batch_size": 64, "n_epochs": 4, "learning_rate": 3e-3}),
    "DQN": (
        DQN,
        CandidateDQNPolicy,
        # buffer_size: far more than these runs' steps (SB3's default, a million, reserves hundreds of MB).
        {"learning_starts": 100, "train_freq": 4, "exploration_fraction": 0.3, "learning_rate": 1e-3, "buffer_size": 10_000},
    ),
}


class AlignedCandidatesEnv(gym.Env):
    """
    Contextual bandit whose clicked candidate is the one with the user's own feature pattern.

    Items are the ``2 ** dim`` sign patterns ``{-0.5, 0.5} ** dim``. Each step draws a user pattern;
    the candidate set is that pattern (the click) and ``k`` other patterns, in random order. The
    clicked candidate maximises the dot product with the user vector, so a scorer can learn it
    exactly, and the optimum is the same for every ``k``. A random pick scores ``1 / (k + 1)``.
    """

    def __init__(self, k: int = 4, dim: int = 6, episode_length: int = 8):
        self.k, self.dim, self.episode_length = k, dim, episode_length
        self.observation_space = spaces.Dict(
            {
                "user": spaces.Box(-1.0, 1.0, (dim,), np.float32),
                "candidates": spaces.Box(-1.0, 1.0, (k + 1, dim), np.float32),
            }
        )
        self.action_space = spaces.Discrete(k + 1)

    def _pattern_features(self, patterns: Any) -> np.ndarray:
        bits = (np.asarray(patterns)[..., None] >> np.arange(self.dim)) & 1
        return (bits - 0.5).astype(np.float32)

    def _draw(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        n_patterns = 2**self.dim
        user_pattern = int(self.np_random.integers(n_patterns))
        negatives = self.np_random.choice(n_patterns - 1, size=self.k, replace=False)
        negatives[negatives >= user_pattern] += 1  # k distinct patterns, none equal to the user's
        self._candidate_items = self.np_random.permutation(np.append(negatives, user_pattern)).astype(np.int64)
        self._clicked_index = int(np.flatnonzero(self._candidate_items == user_pattern)[0])
        obs = {"user": self._pattern_features(user_pattern), "candidates": self._pattern_features(self._candidate_items)}
        return obs, {"candidate_items": self._candidate_items.copy()}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        self._n_steps = 0
        return self._draw()

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        reward = float(int(action) == self._clicked_index)
        self._n_steps += 1
        obs, info = self._draw()
        return obs, reward, False, self._n_steps >= self.episode_length, info


def make_outbrain(k: int, **env_kwargs: Any) -> gym.Env:
    """``OutbrainRec-v0`` on its built-in synthetic data, with Dict observations."""
    return gym.make("OutbrainRec-v0", k=k, obs_mode="dict", **env_kwargs)


def build_policy(policy_class: type[PolicyT], env: gym.Env, **policy_kwargs: Any) -> PolicyT:
    """Build a policy the way SB3 (and DADRL) do: from the spaces, a schedule and the policy kwargs."""
    return policy_class(env.observation_space, env.action_space, lambda _: 1e-3, **policy_kwargs)


def candidate_scores(policy: BasePolicy, obs: dict[str, th.Tensor]) -> th.Tensor:
    """The per-candidate scores of either policy: logits (actor-critic) or Q-values (DQN), ``(batch, k + 1)``."""
    if isinstance(policy, CandidateActorCriticPolicy):
        return policy.action_logits(obs)
    assert isinstance(policy, CandidateDQNPolicy)
    return policy.q_net(obs)


def slot_probabilities(distribution: Distribution, batch_size: int, n_slots: int) -> th.Tensor:
    """The probability of every slot under an action distribution, ``(batch_size, n_slots)``."""
    slots = th.arange(n_slots)
    return th.stack([distribution.log_prob(slot.expand(batch_size)) for slot in slots], dim=1).exp()


def collect_observations(env: gym.Env, batch_size: int, seed: int = 0) -> dict[str, th.Tensor]:
    """Stack ``batch_size`` observations met along random actions into a batch of tensors."""
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    collected: list[dict[str, np.ndarray]] = []
    while len(collected) < batch_size:
        collected.append(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
    return {key: th.as_tensor(np.stack([obs[key] for obs in collected])) for key in ("user", "candidates")}


def bandit_ctr(model: BaseAlgorithm | BasePolicy, env: AlignedCandidatesEnv, n_impressions: int = 400) -> float:
    """Share of greedy picks that hit the click on ``n_impressions`` candidate sets of the tiny bandit."""
    obs = collect_observations(env, batch_size=n_impressions, seed=123)
    actions, _ = model.predict({key: value.numpy() for key, value in obs.items()}, deterministic=True)
    # The clicked candidate is the one equal to the user vector
    clicked_slots = (obs["candidates"] == obs["user"].unsqueeze(1)).all(dim=-1).int().argmax(dim=1)
    return float((th.as_tensor(actions) == clicked_slots).float().mean())


@functools.cache
def trained_on_bandit(algo_name: str) -> BaseAlgorithm:
    """A model trained for 700 steps on the k=4 tiny bandit (cached: several tests read the same one)."""
    algo, policy_class, algo_kwargs = TRAINING_SETUPS[algo_name]
    return algo(policy_class, AlignedCandidatesEnv(k=4), gamma=0.0, seed=0, **algo_kwargs).learn(700)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    th.set_num_threads(1)


@pytest.mark.parametrize("policy_class", POLICY_CLASSES)
def test_scores_are_permutation_equivariant(policy_class: type[BasePolicy]) -> None:
    env = make_outbrain(k=6)
    policy = build_policy(policy_class, env)
    obs = collect_observations(env, batch_size=16)
    permutation = th.as_tensor(np.random.default_rng(0).permutation(7))
    permuted_obs = {"user": obs["user"], "candidates": obs["candidates"][:, permutation]}

    with th.no_grad():
        scores, permuted_scores = candidate_scores(policy, obs), candidate_scores(policy, permuted_obs)
    assert scores.shape == (16, 7)
    th.testing.assert_close(permuted_scores, scores[:, permutation], atol=1e-6, rtol=0)


def test_actor_critic_value_is_permutation_invariant() -> None:
    env = make_outbrain(k=6)
    policy = build_policy(CandidateActorCriticPolicy, env)
    obs = collect_observations(env, batch_size=16)
    permuted_obs = {"user": obs["user"], "candidates": obs["candidates"].flip(1)}

    with th.no_grad():
        values, permuted_values = policy.predict_values(obs), policy.predict_values(permuted_obs)
    assert values.shape == (16, 1)
    th.testing.assert_close(permuted_values, values, atol=1e-6, rtol=0)


@pytest.mark.parametrize("policy_class", POLICY_CLASSES)
def test_state_dict_does_not_depend_on_k(policy_class: type[BasePolicy]) -> None:
    state_dicts = [build_policy(policy_class, make_outbrain(k=k)).state_dict() for k in (1, 4, 50)]
    shapes = [{name: tuple(tensor.shape) for name, tensor in state_dict.items()} for state_dict in state_dicts]
    assert shapes[0] == shapes[1] == shapes[2]


@pytest.mark.parametrize(
    "policy_kwargs",
    [{}, {"net_arch": {"pi": [32], "vf": [16, 16]}}, {"share_features_extractor": False}, {"ortho_init": False}],
)
def test_actor_critic_hooks_give_sb3_shapes(policy_kwargs: dict[str, Any]) -> None:
    env = make_outbrain(k=4)
    policy = build_policy(CandidateActorCriticPolicy, env, **policy_kwargs)
    obs = collect_observations(env, batch_size=5)

    with th.no_grad():
        actions, values, log_prob = policy(obs)
        eval_values, eval_log_prob, entropy = policy.evaluate_actions(obs, actions)
        distribution = policy.get_distribution(obs)
    assert actions.shape == (5,) and values.shape == (5, 1) and log_prob.shape == (5,)
    assert entropy is not None and entropy.shape == (5,)
    th.testing.assert_close(eval_values, values)
    th.testing.assert_close(policy.predict_values(obs), values)
    th.testing.assert_close(eval_log_prob, log_prob)
    th.testing.assert_close(distribution.log_prob(actions), log_prob)
    th.testing.assert_close(slot_probabilities(distribution, batch_size=5, n_slots=5).sum(dim=1), th.ones(5))


@pytest.mark.parametrize("algo_name", ["A2C", "PPO", "DQN"])
def test_sb3_algorithms_learn_the_bandit(algo_name: str) -> None:
    """After 700 steps the greedy CTR on the k=4 tiny bandit is at least 0.9; a random pick scores 0.2."""
    assert bandit_ctr(trained_on_bandit(algo_name), AlignedCandidatesEnv(k=4)) >= 0.9


@pytest.mark.parametrize("algo_name", ["A2C", "DQN"])
def test_weights_trained_at_one_k_serve_another(algo_name: str) -> None:
    """Trained at k=4, the same weights pick among 10 candidates: valid outputs, CTR >= 0.8 (random: 0.1)."""
    model = trained_on_bandit(algo_name)
    env_9 = AlignedCandidatesEnv(k=9)
    policy_9 = transfer_candidate_policy(model.policy, env_9.observation_space, env_9.action_space)
    obs = collect_observations(env_9, batch_size=8)

    # Same weights, new spaces: scores of 10 candidates, identical to the original network's on the same tensors
    assert type(policy_9) is type(model.policy) and policy_9.observation_space == env_9.observation_space
    with th.no_grad():
        scores_9 = candidate_scores(policy_9, obs)
        th.testing.assert_close(scores_9, candidate_scores(model.policy, obs), atol=0, rtol=0)
    assert scores_9.shape == (8, 10) and th.isfinite(scores_9).all()
    if isinstance(policy_9, CandidateActorCriticPolicy):
        probabilities = slot_probabilities(policy_9.get_distribution(obs), batch_size=8, n_slots=10)
        th.testing.assert_close(probabilities.sum(dim=1), th.ones(8))

    # predict() accepts k=9 observations, and the picks are as good as at k=4
    actions, _ = policy_9.predict({key: value.numpy() for key, value in obs.items()}, deterministic=True)
    assert actions.shape == (8,) and set(actions.tolist()) <= set(range(10))
    assert bandit_ctr(policy_9, env_9) >= 0.8


def test_policy_trained_on_outbrain_at_one_k_is_evaluated_at_others() -> None:
    """
    A2C trained for 500 steps at k=4, evaluated by the One-Plus-k protocol at k=1 and k=9.

    Random picks score 0.5 and 0.1; the synthetic data rewards popularity, which the scorer reads in
    the item features (Most-Popular scores about 0.78 at k=9). Thresholds: 0.7 at k=1, 0.5 at k=9.
    """
    model = A2C(CandidateActorCriticPolicy, make_outbrain(k=4), gamma=0.0, seed=0, **TRAINING_SETUPS["A2C"][2]).learn(500)
    policies = {}
    for k in (1, 9):
        env = make_outbrain(k=k)
        policies[k] = transfer_candidate_policy(model.policy, env.observation_space, env.action_space)

    results = evaluate_one_plus_k(policies, ks=(1, 9), env_kwargs={"obs_mode": "dict"}, seed=0, max_impressions=300)
    ctr = dict(zip(results["k"], results["ctr"], strict=True))
    assert ctr[1] >= 0.7 and ctr[9] >= 0.5


def test_transfer_rejects_other_feature_sizes() -> None:
    policy = build_policy(CandidateActorCriticPolicy, AlignedCandidatesEnv(k=4, dim=6))
    other = AlignedCandidatesEnv(k=4, dim=5)
    with pytest.raises(ValueError, match=r'observation_space\["user"\] has 5 features per row .* trained with 6'):
        transfer_candidate_policy(policy, other.observation_space, other.action_space)


@pytest.mark.parametrize("algo_name", ["A2C", "PPO", "DQN"])
def test_saved_model_predicts_identically(tmp_path, algo_name: str) -> None:
    algo, policy_class, algo_kwargs = TRAINING_SETUPS[algo_name]
    env = make_outbrain(k=4)
    model = algo(policy_class, env, seed=0, policy_kwargs={"net_arch": [16]}, **algo_kwargs).learn(128)
    model.save(tmp_path / "model.zip")
    loaded = algo.load(tmp_path / "model.zip", env=env)

    obs = {key: value.numpy() for key, value in collect_observations(env, batch_size=32).items()}
    assert type(loaded.policy) is policy_class
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    with th.no_grad():
        tensors = {key: th.as_tensor(value) for key, value in obs.items()}
        th.testing.assert_close(
            candidate_scores(loaded.policy, tensors), candidate_scores(model.policy, tensors), atol=0, rtol=0
        )


@pytest.mark.parametrize("policy_kwargs", [{}, {"share_features_extractor": False}])
def test_policy_save_load_round_trip(tmp_path, policy_kwargs: dict[str, Any]) -> None:
    env = make_outbrain(k=4)
    policy = build_policy(CandidateActorCriticPolicy, env, **policy_kwargs)
    policy.save(str(tmp_path / "policy.pt"))
    loaded = CandidateActorCriticPolicy.load(str(tmp_path / "policy.pt"))

    obs = collect_observations(env, batch_size=8)
    with th.no_grad():
        th.testing.assert_close(loaded.action_logits(obs), policy.action_logits(obs), atol=0, rtol=0)
        th.testing.assert_close(loaded.predict_values(obs), policy.predict_values(obs), atol=0, rtol=0)


@pytest.mark.parametrize(("algo", "policy_class"), [(A2C, CandidateActorCriticPolicy), (DQN, CandidateDQNPolicy)])
def test_flat_outbrain_observations_are_refused(algo: Any, policy_class: type[BasePolicy]) -> None:
    with pytest.raises(ValueError, match=r'needs a Dict observation space.*got observation_space=Box.*obs_mode="dict"'):
        # A small buffer: SB3 allocates it before the policy refuses the space.
        algo(policy_class, gym.make("OutbrainRec-v0", k=4), **({"buffer_size": 1000} if algo is DQN else {}))


@pytest.mark.parametrize("policy_class", POLICY_CLASSES)
@pytest.mark.parametrize(
    ("observation_space", "action_space", "match"),
    [
        (
            spaces.Dict({"user": spaces.Box(-1.0, 1.0, (6,), np.float32)}),
            spaces.Discrete(5),
            r'got observation_space\["candidates"\]=None.*obs_mode="dict"',
        ),
        (
            spaces.Dict({"user": spaces.Box(-1, 1, (6,)), "candidates": spaces.Box(-1, 1, (30,))}),
            spaces.Discrete(5),
            r"2-D Box of shape \(k \+ 1, item_dim\)",
        ),
        (
            spaces.Dict({"user": spaces.Box(-1, 1, (6,)), "candidates": spaces.Box(-1, 1, (5, 6))}),
            spaces.Discrete(7),
            r"has shape \(5, 6\) \(5 candidates\) but action_space is Discrete\(7\)",
        ),
    ],
)
def test_bad_spaces_raise_value_error(policy_class, observation_space, action_space, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        policy_class(observation_space, action_space, lambda _: 1e-3)


def test_check_candidate_spaces_names_the_owner() -> None:
    with pytest.raises(ValueError, match=r"^MyPolicy needs a Dict observation space"):
        check_candidate_spaces(spaces.Box(-1, 1, (3,)), owner="MyPolicy")
    with pytest.raises(ValueError, match=r"\(one action per candidate\); got Box"):
        check_candidate_spaces(AlignedCandidatesEnv().observation_space, spaces.Box(-1, 1, (5,)), owner="MyPolicy")
