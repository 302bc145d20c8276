"""Methods of paper 000's comparisons as config overlays: a method is data, not a code path."""
from __future__ import annotations

from typing import Any

FR = {"model": {"heads": ["main", "fr"]}}

#: name → overlay on the run config; `eval_head` picks the head the protocol reports (default `main`);
#: `teacher_method` names a method trained first on the same split whose weights become `teacher`.
METHODS: dict[str, dict[str, Any]] = {
    "resnet18": {},
    "fr-resnet18": FR,
    # Offline KD (Hinton et al. 2015, "Distilling the knowledge in a neural network", sec. 2), teacher ResNet50.
    # Paper 000 names only "KD [Hinton et al. 2015]" with teacher ResNet50 / student ResNet18 (sec. 3.1,
    # "Comparisons with Knowledge Distillation baselines") and "cross-entropy loss as supervision" (sec. 3,
    # "Training details"); App. A.1 / Table 1 list no KD setting: it is silent on the temperature, the KD weight and the CE/KD mix. `kd` = 1·CE + 0.9·T²·KL at T = 4
    # (the kd objective's defaults, assumed); `kd-hinton` = Hinton's weighted average (1 − α)·CE + α·T²·KL,
    # α = 0.9, T = 4 (the convention specs/003-kd-residual.md also assumes). The protocol fills the teacher path.
    "kd": {"objective": ["ce", "kd"], "teacher_method": "resnet50"},
    "kd-hinton": {"objective": [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "temperature": 4}],
                  "teacher_method": "resnet50"},
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
