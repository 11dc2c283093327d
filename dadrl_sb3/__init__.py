"""``dadrl_sb3``: DADRL, distributed asynchronous deep RL for recommendation, in the style of Stable-Baselines3."""

from dadrl_sb3.dadrl import DADRL

__version__ = "0.1.0"

__all__ = ["DADRL"]
