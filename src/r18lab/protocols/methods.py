"""Methods of paper 000's comparisons as config overlays: a method is data, not a code path."""
from __future__ import annotations

from typing import Any

FR = {"model": {"heads": ["main", "fr"]}}

#: name → overlay on the run config; `eval_head` picks the head the protocol reports (default `main`);
#: `teacher_method` names a method trained first on the same split whose weights become `teacher`.
METHODS: dict[str, dict[str, Any]] = {
    "resnet18": {},
    "fr-resnet18": FR,
    "kd": {"objective": ["ce", "kd"], "teacher_method": "resnet50"},
    "resnet50": {"model": {"name": "resnet50"}},
    "dml": {"model": {"peers": 2}, "objective": ["ce", "dml"]},
    "kdcl": {"model": {"peers": 2}, "objective": ["ce", "kdcl"]},
    # Ablations of paper 000, sec. 3.5 / Figure 9 (Feature Refiner built up step by step; OJKD; gate).
    "fr-512x512-noact": {"model": {"heads": ["main", "fr"],
                                   "options": {"fr_dim": 512, "fr_depth": 0, "fr_layernorm": False}}},
    "fr-512x64-noact": {"model": {"heads": ["main", "fr"],
                                  "options": {"fr_dim": 64, "fr_depth": 0, "fr_layernorm": False}}},
    "fr-noln": {"model": {"heads": ["main", "fr"], "options": {"fr_layernorm": False}}},
    **{f"fr-depth{k}": {"model": {"heads": ["main", "fr"], "options": {"fr_depth": k}}} for k in range(2, 6)},
    "fr-nogate": {"model": {"heads": ["main", "fr"], "gate": 1.0}},
    "fr-head": {**FR, "eval_head": "fr"},
}
