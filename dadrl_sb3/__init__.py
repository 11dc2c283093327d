"""``dadrl_sb3``: DADRL, distributed asynchronous deep RL for recommendation, in the style of Stable-Baselines3.

Beside DADRL, the baselines of the paper that SB3 lacks: Double DQN, LinUCB, the synchronous A2C-D
(gradient averaging) and A2C-F (federated averaging), and the sanity floors Random and Most-Popular
(SB3's own ``DQN`` and ``A2C`` are used as they are).
"""

from dadrl_sb3.a2c_d import A2CD
from dadrl_sb3.a2c_f import A2CF
from dadrl_sb3.baselines import MostPopular, RandomRecommender
from dadrl_sb3.common.candidate_policies import CandidateActorCriticPolicy, CandidateDQNPolicy, transfer_candidate_policy
from dadrl_sb3.dadrl import DADRL
from dadrl_sb3.ddqn import DoubleDQN
from dadrl_sb3.linucb import LinUCB

__version__ = "0.1.0"

__all__ = [
    "A2CD",
    "A2CF",
    "DADRL",
    "CandidateActorCriticPolicy",
    "CandidateDQNPolicy",
    "DoubleDQN",
    "LinUCB",
    "MostPopular",
    "RandomRecommender",
    "transfer_candidate_policy",
]
