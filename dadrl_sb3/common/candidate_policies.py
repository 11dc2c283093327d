"""
Candidate-scoring policies: one shared network scores every candidate of the set.

The ``OutbrainRec-v0`` environment made with ``obs_mode="dict"`` observes

==============  ====================  ===========================================
key             shape                 meaning
==============  ====================  ===========================================
``user``        ``(user_dim,)``       the user's state (recent clicks, context)
``candidates``  ``(k + 1, item_dim)``  the features of each candidate, slot order
==============  ====================  ===========================================

and acts in ``Discrete(k + 1)``: the slot of the picked candidate. A policy built on the flat
observation (SB3's ``"MlpPolicy"``) ties its output layer to ``k`` and learns one set of weights
per slot, so it must learn the same thing ``k + 1`` times and cannot be evaluated at another
``k``. The policies here score each candidate with the same network, from the user embedding and
that candidate's features:

``score[b, i] = mlp(concat(u[b], c[b, i], P_user u[b] * P_item c[b, i]))``

where ``u`` is the user embedding given by the features extractor (default :class:`UserEncoder`)
and ``P_user``, ``P_item`` are linear projections whose elementwise product lets the network
express user-item affinity directly. The scores are the logits of a categorical distribution over
the slots (:class:`CandidateActorCriticPolicy`) or the Q-values (:class:`CandidateDQNPolicy`).
Consequences, each covered by a test:

- permuting the candidates permutes the scores the same way (the policy does not care where the
  click sits);
- no parameter depends on ``k``: ``policy.state_dict()`` loads into a policy built for any other
  ``k`` (:func:`transfer_candidate_policy`), so one trained policy is evaluated at every ``k``.
"""

from functools import partial
from typing import Any, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, create_mlp
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from stable_baselines3.dqn.policies import DQNPolicy, QNetwork
from torch import nn

__all__ = [
    "CandidateActorCriticPolicy",
    "CandidateDQNPolicy",
    "CandidateQNetwork",
    "CandidateScorer",
    "UserEncoder",
    "check_candidate_spaces",
    "transfer_candidate_policy",
]

USER_KEY = "user"
CANDIDATES_KEY = "candidates"

SelfPolicy = TypeVar("SelfPolicy", bound=BasePolicy)


def check_candidate_spaces(observation_space: spaces.Space, action_space: spaces.Space | None = None, *, owner: str) -> None:
    """
    Check that the spaces are those of a candidate-set environment.

    Expected: a ``Dict`` observation space with a 1-D ``Box`` under ``"user"`` and a 2-D ``Box`` of
    shape ``(k + 1, item_dim)`` under ``"candidates"`` (other keys are allowed and ignored), and a
    ``Discrete(k + 1)`` action space.

    :param observation_space: the environment's observation space
    :param action_space: the environment's action space; ``None`` skips the action checks
    :param owner: the name of the class that needs these spaces, for the error message
    :raises ValueError: naming the space received and what was expected
    """
    hint = 'Make the environment with obs_mode="dict", e.g. gym.make("OutbrainRec-v0", obs_mode="dict").'
    expected = (
        f'{owner} needs a Dict observation space with a 1-D Box under "user" and a 2-D Box of shape '
        f'(k + 1, item_dim) under "candidates"'
    )
    if not isinstance(observation_space, spaces.Dict):
        raise ValueError(f"{expected}; got observation_space={observation_space}. {hint}")
    user_space = observation_space.spaces.get(USER_KEY)
    candidates_space = observation_space.spaces.get(CANDIDATES_KEY)
    if not isinstance(user_space, spaces.Box) or len(user_space.shape) != 1:
        raise ValueError(f'{expected}; got observation_space["user"]={user_space}. {hint}')
    if not isinstance(candidates_space, spaces.Box) or len(candidates_space.shape) != 2:
        raise ValueError(f'{expected}; got observation_space["candidates"]={candidates_space}. {hint}')
    if action_space is None:
        return
    if not isinstance(action_space, spaces.Discrete):
        raise ValueError(f"{owner} needs a Discrete(k + 1) action space (one action per candidate); got {action_space}.")
    if candidates_space.shape[0] != action_space.n:
        raise ValueError(
            f'{owner} needs one action per candidate: observation_space["candidates"] has shape {candidates_space.shape} '
            f"({candidates_space.shape[0]} candidates) but action_space is {action_space}."
        )


def _feature_sizes(observation_space: spaces.Space) -> tuple[int, int]:
    """
    :param observation_space: a Dict space already accepted by :func:`check_candidate_spaces`
    :return: ``(user_dim, item_dim)``: features of the user block and of each candidate
    """
    assert isinstance(observation_space, spaces.Dict)  # checked by check_candidate_spaces before any call
    user_shape, candidates_shape = observation_space[USER_KEY].shape, observation_space[CANDIDATES_KEY].shape
    assert user_shape is not None and candidates_shape is not None  # Box spaces always have a shape
    return user_shape[0], candidates_shape[1]


def _candidates_tensor(obs: PyTorchObs, observation_space: spaces.Space) -> th.Tensor:
    """
    Take the candidate block out of a batched Dict observation, as float.

    :param obs: batched observation, ``obs["candidates"]`` of shape ``(batch, k + 1, item_dim)``
    :param observation_space: the Dict observation space
    :return: the candidates, shape ``(batch, k + 1, item_dim)``
    """
    if not isinstance(obs, dict) or not isinstance(observation_space, spaces.Dict):
        raise TypeError(f'Candidate-scoring policies need Dict observations with a "candidates" key; got {type(obs)}.')
    candidates = preprocess_obs(obs[CANDIDATES_KEY], observation_space[CANDIDATES_KEY])
    assert isinstance(candidates, th.Tensor)  # a Box sub-space always preprocesses to a tensor
    return candidates


class UserEncoder(BaseFeaturesExtractor):
    """
    Embed the user block of a candidate-set observation; the candidates are left to the scorer.

    The output is the user embedding ``u`` the candidate scorer and the value head read. A custom
    features extractor for these policies must likewise read only ``obs["user"]``: one that reads
    the candidates would tie the weights to ``k`` and to the slot order.

    :param observation_space: Dict observation space with a 1-D Box under ``"user"``
    :param features_dim: size of the user embedding
    :param activation_fn: activation after the linear layer
    """

    def __init__(self, observation_space: spaces.Dict, features_dim: int = 64, activation_fn: type[nn.Module] = nn.ReLU):
        check_candidate_spaces(observation_space, owner=type(self).__name__)
        super().__init__(observation_space, features_dim)
        user_dim, _ = _feature_sizes(observation_space)
        self.net = nn.Sequential(nn.Linear(user_dim, features_dim), activation_fn())

    def forward(self, observations: dict[str, th.Tensor]) -> th.Tensor:
        """
        :param observations: preprocessed batch, ``observations["user"]`` of shape ``(batch, user_dim)``
        :return: the user embedding, shape ``(batch, features_dim)``
        """
        return self.net(observations[USER_KEY])


class CandidateScorer(nn.Module):
    """
    Score every candidate with one shared MLP over (user embedding, candidate, their interaction).

    For user embedding ``u`` and candidate ``c`` the input of the MLP is
    ``concat(u, c, P_user u * P_item c)`` of size ``features_dim + item_dim + features_dim``;
    its output is one scalar. No parameter depends on the number of candidates.

    :param features_dim: size of the user embedding
    :param item_dim: number of features per candidate
    :param net_arch: hidden layer sizes of the MLP
    :param activation_fn: activation between hidden layers
    """

    def __init__(self, features_dim: int, item_dim: int, net_arch: list[int], activation_fn: type[nn.Module]):
        super().__init__()
        self.user_projection = nn.Linear(features_dim, features_dim)
        self.item_projection = nn.Linear(item_dim, features_dim)
        self.mlp = nn.Sequential(*create_mlp(2 * features_dim + item_dim, 1, net_arch, activation_fn))

    def forward(self, user_features: th.Tensor, candidates: th.Tensor) -> th.Tensor:
        """
        :param user_features: user embedding, shape ``(batch, features_dim)``
        :param candidates: candidate features, shape ``(batch, n_candidates, item_dim)``
        :return: one score per candidate, shape ``(batch, n_candidates)``
        """
        n_candidates = candidates.shape[1]
        interaction = self.user_projection(user_features).unsqueeze(1) * self.item_projection(candidates)
        user_per_candidate = user_features.unsqueeze(1).expand(-1, n_candidates, -1)
        return self.mlp(th.cat([user_per_candidate, candidates, interaction], dim=-1)).squeeze(-1)


def _split_net_arch(net_arch: list[int] | dict[str, list[int]]) -> tuple[list[int], list[int]]:
    """
    Read SB3's ``net_arch`` forms: a list for both heads, or ``dict(pi=[...], vf=[...])``.

    :param net_arch: hidden sizes
    :return: hidden sizes of the candidate scorer and of the value head
    """
    if isinstance(net_arch, dict):
        return list(net_arch.get("pi", [])), list(net_arch.get("vf", []))
    return list(net_arch), list(net_arch)


class CandidateActorCriticPolicy(ActorCriticPolicy):
    """
    Actor-critic policy whose action logits are per-candidate scores (A2C, PPO, DADRL).

    The actor is a :class:`CandidateScorer`: its score for each of the ``k + 1`` candidates is that
    slot's logit. The critic reads the user embedding and a permutation-invariant pooling of the
    candidate set, ``concat(u, mean_i c_i, max_i c_i)``, through an MLP. Both are independent of
    ``k``; use :func:`transfer_candidate_policy` to evaluate the trained weights at another ``k``.

    Only Discrete action spaces (categorical over slots) are supported, so gSDE is not. Of SB3's
    hooks this class overrides ``_build``, ``forward``, ``evaluate_actions``, ``get_distribution`` and
    ``predict_values``; the inherited ``_predict`` (hence ``predict()``) goes through
    ``get_distribution``. ``mlp_extractor``, ``action_net`` and ``value_net`` do not exist here.

    :param observation_space: Dict space, ``"user"``: ``Box((user_dim,))``, ``"candidates"``:
        ``Box((k + 1, item_dim))``; make the environment with ``obs_mode="dict"``
    :param action_space: ``Discrete(k + 1)``
    :param lr_schedule: learning rate schedule (could be constant)
    :param net_arch: hidden sizes of the scorer and of the value head: one list for both
        (default ``[64, 64]``) or ``dict(pi=[...], vf=[...])``
    :param activation_fn: activation of the scorer's and the value head's hidden layers
    :param ortho_init: orthogonal initialisation as in SB3 (the last scoring layer with gain 0.01,
        so the first policy is near uniform over the candidates)
    :param use_sde: must be False (kept for SB3's constructor protocol)
    :param log_std_init: unused (kept for SB3's constructor protocol)
    :param full_std: unused (kept for SB3's constructor protocol)
    :param use_expln: unused (kept for SB3's constructor protocol)
    :param squash_output: must be False (kept for SB3's constructor protocol)
    :param features_extractor_class: encoder of the user block, ``(batch, user_dim)`` to
        ``(batch, features_dim)``; default :class:`UserEncoder`
    :param features_extractor_kwargs: keyword arguments of the features extractor, e.g.
        ``dict(features_dim=64)``
    :param share_features_extractor: if True, actor and critic share the user encoder
    :param normalize_images: unused for these Box observations (kept for SB3's protocol)
    :param optimizer_class: the optimizer, ``th.optim.Adam`` by default
    :param optimizer_kwargs: keyword arguments of the optimizer, excluding the learning rate
    """

    action_space: spaces.Discrete

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = UserEncoder,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = True,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ):
        check_candidate_spaces(observation_space, action_space, owner=type(self).__name__)
        if use_sde or squash_output:
            raise ValueError(
                f"{type(self).__name__} picks among discrete candidates; use_sde and squash_output must be False, "
                f"got use_sde={use_sde}, squash_output={squash_output}."
            )
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=[64, 64] if net_arch is None else net_arch,
            activation_fn=activation_fn,
            ortho_init=ortho_init,
            log_std_init=log_std_init,
            full_std=full_std,
            use_expln=use_expln,
            features_extractor_class=features_extractor_class,
            features_extractor_kwargs=features_extractor_kwargs,
            share_features_extractor=share_features_extractor,
            normalize_images=normalize_images,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
        )

    def _build(self, lr_schedule: Schedule) -> None:
        """
        Create the candidate scorer, the value head and the optimizer (replaces SB3's MLP extractor).

        :param lr_schedule: learning rate schedule; ``lr_schedule(1)`` is the initial learning rate
        """
        assert isinstance(self.net_arch, list | dict)  # the constructor replaces None
        scorer_arch, value_arch = _split_net_arch(self.net_arch)
        _, item_dim = _feature_sizes(self.observation_space)

        # Actor: the shared per-candidate scorer; critic: MLP over (user, mean and max of candidates)
        self.scorer = CandidateScorer(self.features_dim, item_dim, scorer_arch, self.activation_fn)
        self.value_head = nn.Sequential(*create_mlp(self.features_dim + 2 * item_dim, 1, value_arch, self.activation_fn))

        # Orthogonal initialisation with SB3's gains: sqrt(2) inside, 0.01 on the logits, 1 on the value
        if self.ortho_init:
            modules = [self.pi_features_extractor, self.vf_features_extractor, self.scorer, self.value_head]
            for module in dict.fromkeys(modules):  # the two extractors are one module when shared
                module.apply(partial(self.init_weights, gain=np.sqrt(2)))
            self.init_weights(self.scorer.mlp[-1], gain=0.01)
            self.init_weights(self.value_head[-1], gain=1.0)

        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(share_features_extractor=self.share_features_extractor)
        return data

    def _user_features(self, obs: PyTorchObs) -> tuple[th.Tensor, th.Tensor]:
        """
        :param obs: batched Dict observation
        :return: user embeddings for the actor and for the critic, each ``(batch, features_dim)``
        """
        features = self.extract_features(obs)
        if isinstance(features, tuple):
            return features
        return features, features

    def _distribution(self, pi_features: th.Tensor, candidates: th.Tensor) -> Distribution:
        """
        :param pi_features: user embedding, shape ``(batch, features_dim)``
        :param candidates: shape ``(batch, k + 1, item_dim)``
        :return: categorical distribution over the ``k + 1`` slots, logits = candidate scores
        """
        return self.action_dist.proba_distribution(action_logits=self.scorer(pi_features, candidates))

    def _values(self, vf_features: th.Tensor, candidates: th.Tensor) -> th.Tensor:
        """
        :param vf_features: user embedding, shape ``(batch, features_dim)``
        :param candidates: shape ``(batch, k + 1, item_dim)``
        :return: state values, shape ``(batch, 1)``
        """
        pooled = th.cat([vf_features, candidates.mean(dim=1), candidates.amax(dim=1)], dim=-1)
        return self.value_head(pooled)

    def forward(self, obs: th.Tensor, deterministic: bool = False) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """
        :param obs: batched Dict observation, candidates of shape ``(batch, k + 1, item_dim)``
        :param deterministic: pick the best-scored candidate instead of sampling
        :return: actions ``(batch,)``, values ``(batch, 1)`` and log-probabilities ``(batch,)``
        """
        pi_features, vf_features = self._user_features(obs)
        candidates = _candidates_tensor(obs, self.observation_space)
        distribution = self._distribution(pi_features, candidates)
        actions = distribution.get_actions(deterministic=deterministic)
        return actions, self._values(vf_features, candidates), distribution.log_prob(actions)

    def evaluate_actions(self, obs: PyTorchObs, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """
        :param obs: batched Dict observation, candidates of shape ``(batch, k + 1, item_dim)``
        :param actions: picked slots, shape ``(batch,)``
        :return: values ``(batch, 1)``, log-likelihood of the actions ``(batch,)`` and entropy ``(batch,)``
        """
        pi_features, vf_features = self._user_features(obs)
        candidates = _candidates_tensor(obs, self.observation_space)
        distribution = self._distribution(pi_features, candidates)
        return self._values(vf_features, candidates), distribution.log_prob(actions), distribution.entropy()

    def get_distribution(self, obs: PyTorchObs) -> Distribution:
        """
        :param obs: batched Dict observation, candidates of shape ``(batch, k + 1, item_dim)``
        :return: categorical distribution over the ``k + 1`` slots
        """
        pi_features = BasePolicy.extract_features(self, obs, self.pi_features_extractor)
        return self._distribution(pi_features, _candidates_tensor(obs, self.observation_space))

    def predict_values(self, obs: PyTorchObs) -> th.Tensor:
        """
        :param obs: batched Dict observation, candidates of shape ``(batch, k + 1, item_dim)``
        :return: state values, shape ``(batch, 1)``
        """
        vf_features = BasePolicy.extract_features(self, obs, self.vf_features_extractor)
        return self._values(vf_features, _candidates_tensor(obs, self.observation_space))

    def action_logits(self, obs: PyTorchObs) -> th.Tensor:
        """
        Score every candidate (the logits of the action distribution).

        :param obs: batched Dict observation, candidates of shape ``(batch, k + 1, item_dim)``
        :return: scores, shape ``(batch, k + 1)``; higher means more likely to be picked
        """
        pi_features = BasePolicy.extract_features(self, obs, self.pi_features_extractor)
        return self.scorer(pi_features, _candidates_tensor(obs, self.observation_space))


class CandidateQNetwork(QNetwork):
    """
    Q-network whose Q-value for each slot is the score of a shared :class:`CandidateScorer`.

    ``QNetwork`` builds one output per action; that ``k``-sized MLP is replaced here, under the same
    name ``q_net``, by the ``k``-independent scorer, so ``DQN`` finds the attributes it expects.

    :param observation_space: Dict space with ``"user"`` and ``"candidates"`` Boxes
    :param action_space: ``Discrete(k + 1)``
    :param features_extractor: encoder of the user block (default :class:`UserEncoder`)
    :param features_dim: size of the user embedding
    :param net_arch: hidden sizes of the scorer (default ``[64, 64]``)
    :param activation_fn: activation of the scorer's hidden layers
    :param normalize_images: unused for these Box observations (kept for SB3's protocol)
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
    ) -> None:
        check_candidate_spaces(observation_space, action_space, owner=type(self).__name__)
        super().__init__(
            observation_space, action_space, features_extractor, features_dim, net_arch, activation_fn, normalize_images
        )
        _, item_dim = _feature_sizes(observation_space)
        self.q_net = CandidateScorer(self.features_dim, item_dim, self.net_arch, self.activation_fn)  # type: ignore[assignment]

    def forward(self, obs: PyTorchObs) -> th.Tensor:
        """
        :param obs: batched Dict observation, candidates of shape ``(batch, k + 1, item_dim)``
        :return: Q-values, shape ``(batch, k + 1)``
        """
        user_features = self.extract_features(obs, self.features_extractor)
        return self.q_net(user_features, _candidates_tensor(obs, self.observation_space))


class CandidateDQNPolicy(DQNPolicy):
    """
    DQN policy (online and target network) whose Q-values are per-candidate scores.

    Both networks are :class:`CandidateQNetwork`; use with SB3's ``DQN`` (and Double DQN).

    :param observation_space: Dict space, ``"user"``: ``Box((user_dim,))``, ``"candidates"``:
        ``Box((k + 1, item_dim))``; make the environment with ``obs_mode="dict"``
    :param action_space: ``Discrete(k + 1)``
    :param lr_schedule: learning rate schedule (could be constant)
    :param net_arch: hidden sizes of the scorer (default ``[64, 64]``)
    :param activation_fn: activation of the scorer's hidden layers
    :param features_extractor_class: encoder of the user block, default :class:`UserEncoder`
    :param features_extractor_kwargs: keyword arguments of the features extractor
    :param normalize_images: unused for these Box observations (kept for SB3's protocol)
    :param optimizer_class: the optimizer, ``th.optim.Adam`` by default
    :param optimizer_kwargs: keyword arguments of the optimizer, excluding the learning rate
    """

    q_net: CandidateQNetwork
    q_net_target: CandidateQNetwork

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        lr_schedule: Schedule,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        features_extractor_class: type[BaseFeaturesExtractor] = UserEncoder,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        check_candidate_spaces(observation_space, action_space, owner=type(self).__name__)
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=net_arch,
            activation_fn=activation_fn,
            features_extractor_class=features_extractor_class,
            features_extractor_kwargs=features_extractor_kwargs,
            normalize_images=normalize_images,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
        )

    def make_q_net(self) -> CandidateQNetwork:
        # A fresh user encoder per network, so the target network shares nothing with the online one
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        return CandidateQNetwork(**net_args).to(self.device)


def transfer_candidate_policy(policy: SelfPolicy, observation_space: spaces.Space, action_space: spaces.Space) -> SelfPolicy:
    """
    Build the same candidate-scoring policy for other spaces (another ``k``) and give it the same weights.

    The weights of these policies do not depend on ``k``, so the copy scores candidate sets of any
    size exactly as the original would; only the spaces its ``predict()`` checks inputs against
    change. Typical use: train at one ``k``, evaluate at every ``k`` of the benchmark::

        model = A2C(CandidateActorCriticPolicy, gym.make("OutbrainRec-v0", k=10, obs_mode="dict"))
        env_50 = gym.make("OutbrainRec-v0", k=50, obs_mode="dict")
        policy_50 = transfer_candidate_policy(model.policy, env_50.observation_space, env_50.action_space)

    :param policy: a :class:`CandidateActorCriticPolicy` or :class:`CandidateDQNPolicy` (or subclass)
    :param observation_space: Dict observation space of the target environment; ``user_dim`` and
        ``item_dim`` must match the policy's
    :param action_space: ``Discrete(k + 1)`` action space of the target environment
    :return: a new policy of the same class, on the same device, in evaluation mode
    :raises ValueError: if the spaces are not candidate-set spaces or the feature sizes differ
    """
    check_candidate_spaces(observation_space, action_space, owner=type(policy).__name__)
    for key, old_size, new_size in zip(
        (USER_KEY, CANDIDATES_KEY), _feature_sizes(policy.observation_space), _feature_sizes(observation_space), strict=True
    ):
        if old_size != new_size:
            raise ValueError(
                f'Cannot transfer {type(policy).__name__}: observation_space["{key}"] has {new_size} features per row '
                f"but the policy was trained with {old_size}; only the number of candidates may change."
            )

    # Rebuild from the constructor parameters with the new spaces, then copy the k-independent weights
    constructor_parameters = policy._get_constructor_parameters()
    constructor_parameters.update(observation_space=observation_space, action_space=action_space)
    transferred = type(policy)(**constructor_parameters).to(policy.device)
    transferred.load_state_dict(policy.state_dict())
    transferred.set_training_mode(False)
    return transferred
