"""Policies of DADRL: SB3's actor-critic policies under their usual aliases, and the candidate scorer.

A DADRL device samples actions from, and differentiates, any subclass of SB3's ``ActorCriticPolicy``;
the learner steps that policy's optimizer with the devices' gradients. ``"CandidatePolicy"`` scores
every candidate with one shared network (``obs_mode="dict"``), so it works at any ``k``.
"""

from stable_baselines3.common.policies import ActorCriticPolicy, MultiInputActorCriticPolicy

from dadrl_sb3.common.candidate_policies import CandidateActorCriticPolicy

MlpPolicy = ActorCriticPolicy
MultiInputPolicy = MultiInputActorCriticPolicy
CandidatePolicy = CandidateActorCriticPolicy

__all__ = ["CandidatePolicy", "MlpPolicy", "MultiInputPolicy"]
