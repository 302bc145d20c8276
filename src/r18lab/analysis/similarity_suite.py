"""The teacher–student similarity suite (paper 002c, spec §2): every measure scored for each student against one
teacher on the same images, with per-image (or per-triplet) values so that each student's score gets an interval
and its difference from a baseline student (the independent one) a paired interval.

A measure is a function `(suite, student) -> Score` registered in MEASURES; parametrised names are `<kind>:<arg>`
(`invariance:color`, `consensus:grayscale`). Teacher-side work (the teacher's CAMs, the calibrated attack, the
triplets) is computed once per suite and shared by the students."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..data.domains import DOMAINS, apply_domain
from ..errors import ConfigError
from .nets import Net, same_classes
from .similarity import (Interval, agreement, binomial_ci, bootstrap_ci, cka_matrix, color_transform, crop_transform,
                         identity, invariance_hits, layer_taps, min_n, paired_bootstrap_diff, sample_triplets,
                         shift_transform, boundary_from_predictions, default_taps,
                         plane_predictions)


@dataclass
class Score:
    """A student's value of one measure (%, IoU or CKA) = mean(items)·scale, the per-item values behind it (None:
    no interval), whether those are 0/1 indicators (Wilson interval) or continuous (bootstrap), details for JSON."""

    value: float
    items: np.ndarray | None = None
    binary: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    scale: float = 100.0


@dataclass
class SuiteOptions:
    """Knobs of the measures; the defaults are the spec's tiny setting (§4)."""

    seed: int = 0
    color_strength: float = 0.4  # M3: torchvision factor range of brightness/contrast/saturation
    color_hue: float | None = 0.2
    crop_area: float = 0.5  # M4: area fraction of each of the two crops
    max_shift: int = 4  # M5: pixels
    severity: int = 3  # M7 corruption domains
    target_fooling: float = 0.85  # M2: the teacher's fooling rate the attack's ε is calibrated to
    eps: float | None = None  # M2: a fixed ε instead of calibrating
    attack_steps: int = 5
    triplets: int = 50  # M10
    resolution: int = 50
    cka_images: int = 500  # M11
    taps: tuple[str, ...] | None = None  # M11: layer taps (None: stem, four stages, pooled, logits)
    cam_layer: str = "layer4"  # M1
    batch_size: int = 256


class Suite:
    """One teacher, the images (pixels in [0, 1]) and labels, a baseline student (and a second one for M1's
    sanity row), the options; caches the teacher-side results."""

    def __init__(self, teacher: Net, x01: torch.Tensor, labels: torch.Tensor, baseline: Net | None = None,
                 baseline2: Net | None = None, foreign: Net | None = None, options: SuiteOptions | None = None):
        self.teacher, self.x01, self.labels = teacher, x01, labels.long()
        self.baseline, self.baseline2, self.foreign = baseline, baseline2, foreign
        self.options = options or SuiteOptions()
        self.cache: dict[str, Any] = {}

    def generator(self) -> torch.Generator:
        """A fresh CPU generator at the suite's seed: every net sees the very same random transforms."""
        return torch.Generator().manual_seed(self.options.seed)

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]


MEASURES: dict[str, Callable[[Suite, Net, str], Score]] = {}


def measure(kind: str) -> Callable:
    def add(fn: Callable[[Suite, Net, str], Score]) -> Callable:
        MEASURES[kind] = fn
        return fn
    return add


def split_measure(name: str) -> tuple[str, str]:
    """`invariance:color` → ("invariance", "color"); checks the kind and its argument."""
    kind, _, arg = name.partition(":")
    if kind not in MEASURES:
        raise ConfigError(f"unknown measure {name!r}; choose from {', '.join(measure_names())}")
    choices = ARGUMENTS.get(kind)
    if kind == "invariance" and "@" in arg:  # invariance:color@0.3 — one point of an agreement-vs-strength curve
        base, _, value = arg.partition("@")
        try:
            strength = float(value)
        except ValueError:
            strength = -1.0
        if base not in choices or not strength >= 0 or (base == "crop" and not 0 < strength <= 1):
            raise ConfigError(f"measure {name!r}: write invariance:<color|crop|shift>@<strength ≥ 0> (crop: an area "
                              "fraction in (0, 1], shift: pixels), e.g. invariance:color@0.3")
        return kind, arg
    if choices is not None and arg not in choices:
        raise ConfigError(f"measure {kind} needs one of {', '.join(f'{kind}:{c}' for c in choices)}, got {name!r}")
    if choices is None and arg:
        raise ConfigError(f"measure {kind} takes no argument, got {name!r}")
    return kind, arg


def measure_names() -> list[str]:
    out = []
    for kind in MEASURES:
        choices = ARGUMENTS.get(kind)
        out += [f"{kind}:{c}" for c in choices] if choices else [kind]
    return out


@measure("agreement")
def _agreement(suite: Suite, student: Net, arg: str) -> Score:
    """M12: top-1 agreement with the teacher on the seen test images (both-right / both-wrong in the details)."""
    t = suite.cached("pred", lambda: suite.teacher.predict(suite.x01, suite.options.batch_size))
    s = student.predict(suite.x01, suite.options.batch_size)
    return Score(float((t == s).float().mean() * 100), (t == s).numpy().astype(float), True,
                 agreement(t, s, suite.labels))


@measure("consensus")
def _consensus(suite: Suite, student: Net, domain: str) -> Score:
    """M7: argmax agreement with the teacher on a generated unseen domain (correctness ignored)."""
    x = suite.cached(f"domain:{domain}", lambda: apply_domain(domain, suite.x01, suite.options.severity,
                                                             suite.generator()))
    t = suite.cached(f"pred:{domain}", lambda: suite.teacher.predict(x, suite.options.batch_size))
    s = student.predict(x, suite.options.batch_size)
    hits = (t == s).numpy().astype(float)
    return Score(float(hits.mean() * 100), hits, True,
                 {"student_acc": float((s == suite.labels).float().mean() * 100),
                  "teacher_acc": float((t == suite.labels).float().mean() * 100)})


def _invariance_pair(suite: Suite, arg: str):
    """The two views of `invariance:<kind>[@strength]` (strength default: the suite's option)."""
    o = suite.options
    kind, _, value = arg.partition("@")
    if kind == "color":
        return identity, color_transform(float(value) if value else o.color_strength, o.color_hue)
    if kind == "crop":
        area = float(value) if value else o.crop_area
        return crop_transform(area), crop_transform(area)
    shift = int(float(value)) if value else o.max_shift
    return shift_transform(shift), shift_transform(shift)


@measure("invariance")
def _invariance(suite: Suite, student: Net, kind: str) -> Score:
    """M3–M5: % of images whose prediction is the same on two views (clean vs colour-altered; two random crops;
    two random shifts), the views identical for every net (same seed, same batches)."""
    a, b = _invariance_pair(suite, kind)
    hits = invariance_hits(student, suite.x01, a, b, suite.generator(), suite.options.batch_size).numpy().astype(float)
    return Score(float(hits.mean() * 100), hits, True)


@measure("cam")
def _cam(suite: Suite, student: Net, arg: str) -> Score:
    """M1: % of images whose Grad-CAM (true class) is closer (cosine) to the teacher's than the baseline student's
    is; for the baseline itself, against the second baseline (the Ind-vs-Ind sanity row, ≈ 50 %)."""
    from .gradcam import cam_agreement, gradcam

    layer = suite.options.cam_layer
    if suite.baseline is None:
        raise ConfigError("measure cam compares each student with a baseline student; pass --baseline")
    cam_t = suite.cached("cam:teacher", lambda: gradcam(suite.teacher, suite.x01, suite.labels, layer))
    cam_b = suite.cached("cam:baseline", lambda: gradcam(suite.baseline, suite.x01, suite.labels, layer))
    if student is suite.baseline:
        if suite.baseline2 is None:
            return Score(float("nan"), None, True, {"note": "pass --baseline2 for the Ind-vs-Ind row"})
        cam_s = suite.cached("cam:baseline2", lambda: gradcam(suite.baseline2, suite.x01, suite.labels, layer))
    else:
        cam_s = gradcam(student, suite.x01, suite.labels, layer)
    res = cam_agreement(cam_t, cam_s, cam_b)
    items = res["indicator"].numpy().astype(float)
    return Score(float(res["percent"]), items, False)


def _attack(suite: Suite, source: Net, key: str) -> dict:
    from .attack import calibrate_eps, ifgsm

    o = suite.options

    def make() -> dict:
        if o.eps is None:
            cal = calibrate_eps(source, suite.x01, suite.labels, target=o.target_fooling, steps=o.attack_steps,
                                batch_size=o.batch_size)
            eps = cal["eps"]
        else:
            cal, eps = {"eps": o.eps, "reached": None}, o.eps
        x_adv = ifgsm(source, suite.x01, suite.labels, eps, steps=o.attack_steps, batch_size=o.batch_size)
        clean, adv = source.predict(suite.x01), source.predict(x_adv)
        return {"eps": eps, "calibration": {k: v for k, v in cal.items() if not torch.is_tensor(v)},
                "x_adv": x_adv, "kept": (clean != adv).numpy()}
    return suite.cached(key, make)


@measure("adv")
def _adv(suite: Suite, student: Net, arg: str) -> Score:
    """M2: I-FGSM (k = 5, α = ε/4) on the teacher — or, `adv:foreign`, on an unrelated net (Fig. 3c control) —
    with ε calibrated to the teacher's fooling rate; % of the images fooling the source whose student prediction
    changes from the student's own clean prediction."""
    if arg == "foreign" and suite.foreign is None:
        raise ConfigError("measure adv:foreign attacks an unrelated network; pass --foreign PATH")
    source = suite.teacher if arg == "" else suite.foreign
    att = _attack(suite, source, f"attack:{arg or 'teacher'}")
    kept = att["kept"]
    if not kept.any():
        return Score(float("nan"), None, True, {"eps": att["eps"], "kept": 0})
    clean = student.predict(suite.x01[kept])
    adv = student.predict(att["x_adv"][kept])
    hits = (clean != adv).numpy().astype(float)
    return Score(float(hits.mean() * 100), hits, True, {"eps": att["eps"], "kept": int(kept.sum()),
                                                        "calibration": att["calibration"]})


@measure("boundary")
def _boundary(suite: Suite, student: Net, arg: str) -> Score:
    """M10: decision-boundary IoU with the teacher on planes through triplets of test images (mean over classes)."""
    o = suite.options
    idx = suite.cached("triplets", lambda: sample_triplets(suite.labels, o.triplets, suite.generator()))
    planes = suite.x01[idx]
    teacher = suite.cached("planes:teacher", lambda: plane_predictions(suite.teacher, planes, o.resolution,
                                                                      batch_size=o.batch_size))
    res = boundary_from_predictions(teacher, plane_predictions(student, planes, o.resolution, batch_size=o.batch_size))
    return Score(float(res["iou"]), np.asarray(res["iou_per_triplet"], dtype=float), False,
                 {"agreement": float(res["agreement"])}, scale=1.0)


@measure("cka")
def _cka(suite: Suite, student: Net, arg: str) -> Score:
    """M11: linear CKA between the teacher's and the student's taps (stem, four stages, pooled, logits) on the first
    `cka_images` images; the value is the mean of the diagonal (corresponding layers). No interval."""
    x = suite.x01[: suite.options.cka_images]
    taps = suite.options.taps
    t = suite.cached("taps:teacher", lambda: layer_taps(suite.teacher, x, taps or default_taps(suite.teacher)))
    names_t, names_s, mat = cka_matrix(t, layer_taps(student, x, taps or default_taps(student)))
    diag = [float(mat[i, i]) for i in range(min(mat.shape))]
    return Score(float(np.nanmean(diag)), None, False, {"taps_teacher": names_t, "taps_student": names_s,
                                                        "matrix": mat.tolist(), "diagonal": diag}, scale=1.0)


ARGUMENTS: dict[str, tuple[str, ...] | None] = {
    "agreement": None, "consensus": tuple(DOMAINS), "invariance": ("color", "crop", "shift"), "cam": None,
    "adv": ("", "foreign"), "boundary": None, "cka": None}


def interval(score: Score, confidence: float = 0.95) -> Interval | None:
    """Wilson interval for 0/1 items (as %), bootstrap of the mean otherwise; None without items or too few."""
    if score.items is None or len(score.items) < min_n(confidence):
        return None
    k = score.scale
    if score.binary:
        iv = binomial_ci(int(score.items.sum()), len(score.items), confidence)
        return Interval(iv.estimate * k, iv.low * k, iv.high * k, iv.n, iv.confidence)
    return bootstrap_ci(score.items * k, confidence)


def paired_difference(a: Score, b: Score, confidence: float = 0.95) -> Interval | None:
    """Mean of the per-item differences a − b (same items) with a paired bootstrap interval; None if not paired."""
    if a.items is None or b.items is None or len(a.items) != len(b.items) or len(a.items) < min_n(confidence):
        return None
    return paired_bootstrap_diff(a.items * a.scale, b.items * b.scale, confidence)


def run_suite(suite: Suite, students: dict[str, Net], measures: list[str],
              log: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Every measure for every student: {"scores": {student: {measure: Score}}, "seconds": {measure: s}}."""
    same_classes(suite.teacher, list(students.values()))
    parsed = [(m, *split_measure(m)) for m in measures]
    scores: dict[str, dict[str, Score]] = {name: {} for name in students}
    seconds: dict[str, float] = {}
    for name, kind, arg in parsed:
        tic = time.perf_counter()
        for student_name, net in students.items():
            scores[student_name][name] = MEASURES[kind](suite, net, arg)
        seconds[name] = time.perf_counter() - tic
        if log:
            log(f"{name}: {seconds[name]:.1f} s for {len(students)} students")
    return {"scores": scores, "seconds": seconds}
