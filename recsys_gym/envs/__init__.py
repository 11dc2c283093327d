"""Environments of :mod:`recsys_gym` and their registration with Gymnasium."""

from gymnasium.envs.registration import register, registry

from recsys_gym.envs.outbrain_rec import OutbrainRecEnv

ENV_ID = "OutbrainRec-v0"


def register_envs() -> None:
    """Register ``OutbrainRec-v0`` once; importing :mod:`recsys_gym` calls this."""
    if ENV_ID not in registry:
        register(id=ENV_ID, entry_point="recsys_gym.envs.outbrain_rec:OutbrainRecEnv")


__all__ = ["ENV_ID", "OutbrainRecEnv", "register_envs"]
