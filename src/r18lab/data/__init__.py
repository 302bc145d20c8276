"""Data: sources, decode cache, splits, augmentation and on-device batch loading."""
from .dataset import Dataset
from .loading import load

__all__ = ["Dataset", "load"]
