"""Objectives: each returns named loss terms. Every module of this package is imported here, so adding an
objective is one decorated class (`@OBJECTIVES.register("name")`) in one file of this folder."""
import importlib
import pkgutil

from .base import Batch, Objective, ObjectiveContext, build_objective

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Batch", "Objective", "ObjectiveContext", "build_objective"]
