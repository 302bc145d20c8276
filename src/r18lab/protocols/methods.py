"""Methods of paper 000's comparisons as config overlays: a method is data, not a code path."""
from __future__ import annotations

from typing import Any

FR = {"model": {"heads": ["main", "fr"]}}
MIXMATCH = {"data": {"unlabelled": "rest"}, "objective": ["mixmatch"], "hooks": ["ema"],
            "optim": {"name": "adamw", "lr": 0.002, "weight_decay": 0.02}, "schedule": {"name": "constant"}}

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
    # Other backbones, with and without the Feature Refiner (paper 000, Figure 8, appendix B): `fr-efficientnet_b3`
    # uses FR width 50, the authors' default when `-fs` is not given (appendix Table 2's +82,660); `fr-vgg11` puts
    # the FR in place of VGG's own fully-connected classifier (appendix B).
    **{name: {"model": {"name": name}} for name in ("resnet34", "densenet121", "efficientnet_b3", "vgg11")},
    "fr-resnet34": {"model": {"name": "resnet34", "heads": ["main", "fr"]}},
    "fr-densenet121": {"model": {"name": "densenet121", "heads": ["main", "fr"]}},
    "fr-efficientnet_b3": {"model": {"name": "efficientnet_b3", "heads": ["main", "fr"], "options": {"fr_dim": 50}}},
    "fr-vgg11": {"model": {"name": "vgg11", "heads": ["main", "fr"], "options": {"classifier": False}}},
    # Learning Loss for Active Learning (Yoo & Kweon 2019): the loss-prediction head on the four stage maps, trained
    # with the ranking loss (λ = 1) beside CE; its stage inputs detached after 60 % of training (epoch 120 of 200).
    "llal": {"model": {"heads": ["main", "llal"]}, "objective": ["ce", "llal"], "hooks": ["llal_detach"]},
    # MixMatch (Berthelot et al. 2019) as the reference reproduction YU1ut/MixMatch-pytorch trains it: Adam, lr 0.002,
    # constant; its decoupled decay of 0.02·lr per step is AdamW's weight_decay 0.02; EMA 0.999 evaluated; K = 2,
    # T = 0.5, α = 0.75, λ_u = 75 (the objective's defaults). Paper 000 sec. 3.3 couples it with the FR.
    "mixmatch": MIXMATCH,
    "fr-mixmatch": {**MIXMATCH, **FR},
    # Non-convolutional baselines trained from scratch (paper 000, Figure 4). Their optimiser is ours (appendix A.3
    # is lost): AdamW, lr 1e-3, weight decay 0.05, 5 warm-up epochs, then the recipe's schedule.
    **{name: {"model": {"name": name}, "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
              "schedule": {"warmup_epochs": 5}} for name in ("mlp_mixer", "vit")},
}
