from dadrl_sb3.dadrl.dadrl import DADRL
from dadrl_sb3.dadrl.policies import MlpPolicy, MultiInputPolicy

__all__ = ["DADRL", "MlpPolicy", "MultiInputPolicy"]
