"""Objectives: each returns named loss terms; importing this package registers them all."""
from . import distill, supervised  # noqa: F401
from .base import Batch, Objective, ObjectiveContext, build_objective

__all__ = ["Batch", "Objective", "ObjectiveContext", "build_objective"]
