"""Pieces shared by the algorithms of ``dadrl_sb3``."""
