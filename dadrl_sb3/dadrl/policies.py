"""Policies of DADRL: SB3's actor-critic policies under their usual aliases.

A DADRL device samples actions from, and differentiates, any subclass of SB3's ``ActorCriticPolicy``;
the learner steps that policy's optimizer with the devices' gradients.
"""

from stable_baselines3.common.policies import ActorCriticPolicy, MultiInputActorCriticPolicy

MlpPolicy = ActorCriticPolicy
MultiInputPolicy = MultiInputActorCriticPolicy

__all__ = ["MlpPolicy", "MultiInputPolicy"]
