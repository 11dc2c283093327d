"""LinUCB: the linear upper-confidence-bound contextual bandit of Li et al. (2010)."""

from dadrl_sb3.linucb.linucb import LinUCB

__all__ = ["LinUCB"]
