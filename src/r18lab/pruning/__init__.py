"""Pruning at initialisation (paper 002, first work; spec 002a): scores (`scores`), score → mask selection and
layer densities (`select`), the mask file (`io`). The training-time side is the `prune` hook
(`train/hooks/prune.py`); the topology of a mask is `analysis/masks.py`."""
