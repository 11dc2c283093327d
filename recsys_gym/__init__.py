"""``recsys_gym``: Gymnasium environments for recommendation built from logged clicks.

Importing the package registers ``OutbrainRec-v0``, so both ``import recsys_gym;
gym.make("OutbrainRec-v0")`` and ``gym.make("recsys_gym:OutbrainRec-v0")`` work, in worker
processes too.
"""

from recsys_gym.data.dataset import CompactDataset, load_dataset
from recsys_gym.envs import ENV_ID, OutbrainRecEnv, register_envs
from recsys_gym.evaluation import evaluate_one_plus_k

register_envs()

__version__ = "0.1.0"

__all__ = ["ENV_ID", "CompactDataset", "OutbrainRecEnv", "evaluate_one_plus_k", "load_dataset", "register_envs"]
