"""Paper 003's Tables 8 (FLOPs) and 9 (parameters), in millions as printed (003 txt L251–L278; spec 003 §3.1):
keyed (family, "R" | "NR", variant) for the 6 families × 9 grouping variants × {residual, no residual}."""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

FAMILIES = ("wrn22_2", "wrn22_10", "wrn28_2", "wrn40_2", "resnet18", "mobilenet_v2")
VARIANTS = ("g2", "g4", "g8", "g16", "G1", "G2", "G4", "G8", "G16")
NUM_CLASSES = 100  # CIFAR-100 head, 32×32 input


def table(text: str, cast=str) -> dict[tuple[str, str, str], Any]:
    """Lines `family R|NR v_g2 … v_G16` → {(family, kind, variant): cast(value)}."""
    rows = {}
    for line in text.strip().splitlines():
        family, kind, *values = line.split()
        rows.update({(family, kind, v): cast(value) for v, value in zip(VARIANTS, values)})
    return rows


PRINTED_FLOPS = table("""
wrn22_2 R 93.65 56.49 37.91 28.62 22.17 25.01 30.68 42.04 64.75
wrn22_2 NR 92.07 54.92 36.34 27.05 20.6 23.43 29.11 40.47 63.17
wrn22_10 R 2281 1366 908.8 680.1 465 478.6 505.8 560.2 669
wrn22_10 NR 2252 1337 880 651.3 436.2 449.8 477 531.4 640.2
wrn28_2 R 128.3 76.94 51.28 38.45 29.49 33.36 41.1 56.59 87.55
wrn28_2 NR 126.7 75.36 49.71 36.88 27.92 31.79 39.53 55.01 85.98
wrn40_2 R 197.5 117.8 78.02 58.11 44.14 50.07 61.94 85.68 133.2
wrn40_2 NR 195.9 116.3 76.44 56.54 42.57 48.5 60.37 84.11 131.6
resnet18 R 328.5 198.7 133.8 101.4 73.1 77.26 85.59 102.3 135.6
resnet18 NR 322.2 192.4 127.5 95.08 66.8 70.97 79.3 95.96 129.3
mobilenet_v2 R 634.4 348.3 205.2 133.7 64.95 67.72 73.25 84.32 106.5
mobilenet_v2 NR 634.4 348.3 205.2 133.7 64.95 67.72 73.25 84.32 106.5
""")

PRINTED_PARAMS = table("""
wrn22_2 R 0.656 0.402 0.275 0.211 0.159 0.17 0.192 0.236 0.325
wrn22_2 NR 0.645 0.391 0.264 0.2 0.148 0.159 0.181 0.225 0.314
wrn22_10 R 16 9.63 6.46 4.88 3.35 3.41 3.51 3.73 4.17
wrn22_10 NR 15.7 9.37 6.21 4.62 3.09 3.15 3.26 3.48 3.91
wrn28_2 R 0.894 0.543 0.368 0.28 0.207 0.223 0.253 0.313 0.434
wrn28_2 NR 0.883 0.532 0.357 0.269 0.197 0.212 0.242 0.303 0.424
wrn40_2 R 1.37 0.826 0.554 0.418 0.305 0.328 0.375 0.467 0.653
wrn40_2 NR 1.36 0.816 0.543 0.407 0.294 0.318 0.364 0.457 0.642
resnet18 R 6.57 4.01 2.74 2.1 1.49 1.52 1.58 1.71 1.95
resnet18 NR 6.39 3.84 2.56 1.93 1.32 1.35 1.41 1.53 1.78
mobilenet_v2 R 22.6 12.5 7.38 4.84 2.37 2.43 2.56 2.82 3.33
mobilenet_v2 NR 22.6 12.5 7.38 4.84 2.37 2.43 2.56 2.82 3.33
""")


def _round(x: Decimal, decimals: int) -> Decimal:
    return x.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)


def matches_printed(value: int, printed: str) -> bool:
    """Whether an exact count prints as the paper's value: millions rounded half-up to max(printed decimals,
    3 significant figures), or — the authors' double rounding in 3 cells — first to 3 decimals (spec 003 §3.1)."""
    exact, shown = Decimal(value) / Decimal(10**6), Decimal(printed)
    decimals = max(-shown.as_tuple().exponent, 2 - exact.adjusted())
    return _round(exact, decimals) == shown or _round(_round(exact, 3), decimals) == shown


def variant_transforms(variant: str, residual: bool) -> list:
    """Model transforms of variant R-x / NR-x: `gK` → groups K, `GK` → group_width K, `std` → none (spec 003 §1.1)."""
    from ..errors import ConfigError
    steps: list = [] if residual else ["no_residual"]
    kind, k = variant[:1], variant[1:]
    if variant == "std":
        return steps
    if kind not in ("g", "G") or not k.isdigit() or int(k) < 1:
        raise ConfigError(f"unknown grouping variant {variant!r}; use std, gK (K groups) or GK (K channels per group)")
    return steps + [{"name": "grouped", ("groups" if kind == "g" else "group_width"): int(k)}]


def paper_key(name: str, transforms: list, *, num_classes: int, width: float, stem: str, image_size: int,
              heads: list) -> tuple[str, str, str] | None:
    """(family, R|NR, variant) when a model configuration is one of the 108 Paper 003 counts, else None."""
    if (name not in FAMILIES or num_classes != NUM_CLASSES or width != 1.0 or stem != "cifar"
            or image_size != 32 or list(heads) != ["main"]):
        return None
    steps = list(transforms)
    kind = "NR" if steps[:1] == ["no_residual"] else "R"
    steps = steps[1:] if kind == "NR" else steps
    if len(steps) != 1 or not isinstance(steps[0], dict) or steps[0].get("name") != "grouped" or len(steps[0]) != 2:
        return None
    (option, k), = [(o, v) for o, v in steps[0].items() if o != "name"]
    variant = {"groups": "g", "group_width": "G"}.get(option, "?") + str(k)
    return (name, kind, variant) if variant in VARIANTS else None


def paper_comparison(key: tuple[str, str, str], params: int, flops: int) -> dict:
    """Our exact counts beside Tables 8/9's printed millions, and whether they round to them."""
    return {"source": "paper 003, Tables 8 (FLOPs) and 9 (params), millions", "family": key[0], "kind": key[1],
            "variant": key[2], "params_printed": PRINTED_PARAMS[key], "flops_printed": PRINTED_FLOPS[key],
            "params_match": matches_printed(params, PRINTED_PARAMS[key]),
            "flops_match": matches_printed(flops, PRINTED_FLOPS[key])}


def reproduce_tables() -> list[dict]:
    """One row per model of Tables 8/9 (6 families × {R, NR} × 9 variants): our exact counts (built on the meta
    device), the paper's printed millions, and whether they round to them."""
    import torch

    from ..analysis.cost import count_flops, count_params
    from ..models.classifier import create_model

    rows = []
    for family in FAMILIES:
        for kind in ("R", "NR"):
            for variant in VARIANTS:
                with torch.device("meta"):
                    model = create_model(family, num_classes=NUM_CLASSES, stem="cifar",
                                         transforms=variant_transforms(variant, kind == "R"))
                params, flops = count_params(model), count_flops(model, (3, 32, 32))
                key = (family, kind, variant)
                rows.append({"family": family, "kind": kind, "variant": variant, "params": params,
                             "params_printed_M": PRINTED_PARAMS[key], "params_match": matches_printed(params, PRINTED_PARAMS[key]),
                             "flops": flops, "flops_printed_M": PRINTED_FLOPS[key],
                             "flops_match": matches_printed(flops, PRINTED_FLOPS[key])})
    return rows
