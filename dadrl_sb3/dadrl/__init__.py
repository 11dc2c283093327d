from dadrl_sb3.dadrl.dadrl import DADRL
from dadrl_sb3.dadrl.policies import CandidatePolicy, MlpPolicy, MultiInputPolicy

__all__ = ["DADRL", "CandidatePolicy", "MlpPolicy", "MultiInputPolicy"]
