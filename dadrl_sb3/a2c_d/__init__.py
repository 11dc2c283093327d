from dadrl_sb3.a2c_d.a2c_d import A2CD, GradientDevice
from dadrl_sb3.dadrl.policies import CandidatePolicy, MlpPolicy, MultiInputPolicy

__all__ = ["A2CD", "CandidatePolicy", "GradientDevice", "MlpPolicy", "MultiInputPolicy"]
