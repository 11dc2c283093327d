from dadrl_sb3.a2c_f.a2c_f import A2CF, FederatedDevice, FederatedMessage
from dadrl_sb3.dadrl.policies import CandidatePolicy, MlpPolicy, MultiInputPolicy

__all__ = ["A2CF", "CandidatePolicy", "FederatedDevice", "FederatedMessage", "MlpPolicy", "MultiInputPolicy"]
