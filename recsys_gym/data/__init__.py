"""Data sources of :mod:`recsys_gym` and the compact, cached form every environment reads."""

from recsys_gym.data.dataset import BuildOptions, CompactDataset, build_dataset, default_cache_dir, load_dataset
from recsys_gym.data.raw import RawLog

__all__ = ["BuildOptions", "CompactDataset", "RawLog", "build_dataset", "default_cache_dir", "load_dataset"]
