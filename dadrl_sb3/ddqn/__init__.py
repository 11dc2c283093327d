"""Double DQN: SB3's DQN with the double Q-learning target of van Hasselt et al. (2016)."""

from dadrl_sb3.ddqn.ddqn import DoubleDQN

__all__ = ["DoubleDQN"]
