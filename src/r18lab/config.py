"""Typed, validated run configuration: a YAML file, an optional named scale, then key=value overrides."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ResizedCropConfig(Strict):
    """torchvision RandomResizedCrop's ranges: area fraction `scale` and aspect ratio w/h `ratio` (defaults its own)."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    @model_validator(mode="after")
    def _ranges(self) -> "ResizedCropConfig":
        (s0, s1), (r0, r1) = self.scale, self.ratio
        if not (0 < s0 <= s1 <= 1) or not (0 < r0 <= r1 < float("inf")):
            raise ValueError(f"needs scale [lo, hi] with 0 < lo <= hi <= 1 and ratio [lo, hi] with 0 < lo <= hi; "
                             f"got scale {list(self.scale)}, ratio {list(self.ratio)}")
        return self


class AugmentConfig(Strict):
    crop: Union[int, None, Literal["auto"]] = "auto"  # "auto": the image size; None: no crop (with RRC: output size)
    padding: int = Field(4, ge=0)
    pad_mode: Literal["zero", "reflect"] = "zero"
    flip: bool = True
    cutout: int = Field(0, ge=0)
    color_jitter: list[float] | None = None  # [brightness, contrast, saturation, hue], torchvision ColorJitter
    color_jitter_p: float = Field(1.0, ge=0, le=1)  # probability per image that the jitter is applied
    grayscale_p: float = Field(0.0, ge=0, le=1)  # probability per image of greyscale (3 equal channels)
    random_resized_crop: ResizedCropConfig | None = None  # replaces pad-and-crop (needs padding: 0); true = defaults

    @field_validator("color_jitter")
    @classmethod
    def _jitter(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (len(v) != 4 or min(v) < 0 or v[3] > 0.5 or any(x != x or x == float("inf") for x in v)):
            raise ValueError("color_jitter is [brightness, contrast, saturation, hue] with each >= 0 and hue <= 0.5 "
                             "(torchvision ColorJitter), e.g. [0.4, 0.4, 0.4, 0.1]")
        return v

    @field_validator("random_resized_crop", mode="before")
    @classmethod
    def _rrc_flag(cls, v: Any) -> Any:
        return {} if v is True else None if v is False else v

    @model_validator(mode="after")
    def _rrc_replaces_padding(self) -> "AugmentConfig":
        if self.random_resized_crop is not None and self.padding > 0:
            raise ValueError(f"random_resized_crop replaces pad-and-crop but padding is {self.padding}; "
                             "set data.augment.padding=0")
        return self


class DataConfig(Strict):
    source: str = "digits"
    #: a split (folder) name, or several concatenated, e.g. [art_painting, cartoon, photo] (leave-one-domain-out)
    train_split: Union[str, list[str]] = "train"
    test_split: Union[str, list[str]] = "test"
    #: where train/test come from in an image folder: `folders` = its <split>/ level; `auto` = a stratified seeded
    #: split of <class>/<image> (test_fraction; seed split_seed or 0; saved beside the decode cache and reused);
    #: None = `folders` when the folder has a split level, else `auto`
    split: Literal["auto", "folders"] | None = None
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of each class in the test split of split=auto")
    exclude_classes: list[str] = []  # class names dropped from every split, e.g. [BACKGROUND_Google]
    labels: int | None = Field(None, ge=1, description="labelled pool size (nested, class-balanced); None = all")
    indices: str | None = None  # a file of training-set indices (JSON list, .npy or one per line): train on exactly these
    #: images a semi-supervised objective (mixmatch) may use without their labels: `none`, or `rest` = every image of
    #: the training split outside the labelled pool
    unlabelled: Literal["none", "rest"] = "none"
    task: Union[str, dict[str, Any]] = "classes"  # the labels learnt: classes, cifar2, {name: binary, positive: [...]}, ...
    test_size: int | None = Field(None, ge=1, description="a class-balanced subset of the test split; None = all")
    balanced: bool = True
    split_seed: int | None = None  # None: the run's seed
    image_size: int | None = Field(None, ge=1)
    #: how image files reach image_size²: `squash` (bilinear to the square, aspect ratio not kept) or `shorter_side`
    #: (shorter side to image_size, then the centre square); train-time random-resized-crop: augment.random_resized_crop
    resize: Literal["squash", "shorter_side"] = "squash"
    channels: Literal[1, 3, "auto"] = 3  # 1: greyscale (the model's first layer takes 1 channel); auto: 1 if all grey
    on_bad_image: Literal["error", "skip"] = "error"  # an undecodable image file: stop, or skip it and list it
    options: dict[str, Any] = {}  # passed to the source, e.g. {num_classes: 4, n: 512} for synthetic
    normalize: Literal["dataset", "none"] = "dataset"
    augment: AugmentConfig = AugmentConfig()

    @field_validator("train_split", "test_split")
    @classmethod
    def _split_names(cls, v: Union[str, list[str]]) -> Union[str, list[str]]:
        names = [v] if isinstance(v, str) else v
        if not names or any(not n.strip() for n in names) or len(set(names)) != len(names):
            raise ValueError(f"needs a split name or a list of distinct split names, e.g. [art_painting, photo]; got {v!r}")
        return v[0] if isinstance(v, list) and len(v) == 1 else v


class InitFromConfig(Strict):
    """Start from another checkpoint: its whole backbone, and `heads` {this model's head: the checkpoint's head}
    copied (paper 001 §2: the student starts as the generalist). `preprocessing`: `checkpoint` feeds the run the
    checkpoint's stored normalisation (what its weights expect; ImageNet's mean/std for a plain torchvision/timm file
    without one; the default), `data` recomputes it from the data. A `.pth` is read with weights_only=True."""

    checkpoint: str
    heads: dict[str, str] = {}
    preprocessing: Literal["checkpoint", "data"] = "checkpoint"


class ModelConfig(Strict):
    name: str = "resnet18"
    stem: Literal["cifar", "imagenet"] = "cifar"
    width: float = Field(1.0, gt=0, le=64, allow_inf_nan=False)
    heads: list[Union[str, dict[str, Any]]] = ["main"]  # a name, or {name: fr, dim: 64, ...} with head options
    gate: float | None = Field(None, allow_inf_nan=False)
    peers: int = Field(1, ge=1)
    transforms: list[Union[str, dict[str, Any]]] = []  # applied to the built backbone (or model), in order
    num_classes: int | None = Field(None, ge=1)  # output units; None = the task's classes, 1 = one logit (two classes)
    init: str = "default"  # weight initialisation: default (each layer's own) or flax_lecun
    init_from: InitFromConfig | None = None  # start from a checkpoint's weights (backbone + chosen heads)
    options: dict[str, Any] = {}

    @field_validator("init_from", mode="before")
    @classmethod
    def _init_path(cls, v: Any) -> Any:
        return {"checkpoint": v} if isinstance(v, str) else v


class OptimConfig(Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    no_decay_norm_bias: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    #: learning rates by parameter name: {pattern: lr}; a pattern is a glob over parameter names (`layer4.*`) or
    #: `heads` (fc and every named head) or `backbone` (the rest); the first matching pattern wins, others get `lr`
    lr_groups: dict[str, float] = {}

    @field_validator("lr_groups")
    @classmethod
    def _positive_lrs(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k, lr in v.items() if not (lr > 0 and lr != float("inf"))]
        if bad:
            raise ValueError(f"every lr in lr_groups must be > 0 and finite; {bad[0]!r} is {v[bad[0]]}")
        return v


class ScheduleConfig(Strict):
    name: Literal["cosine", "multistep", "constant", "linear"] = "cosine"  # linear: to 0 at the end
    milestones: list[Union[int, float]] = []  # epochs (fractions allowed, e.g. 2.5 of 5), for multistep
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)
    min_lr: float = Field(0.0, ge=0)


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    drop_last: bool = False
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(None, gt=0)
    amp: bool = False
    channels_last: bool = False
    deterministic: bool = False
    device: str = "auto"
    threads: int | None = Field(None, ge=1)
    eval_every: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (smoke tests)")
    progress: Literal["auto", "bar", "lines", "none"] = "auto"  # lines (auto without a TTY): a line at least every 30 s
    sampler: Literal["uniform", "balanced"] = "uniform"  # balanced: each draw a class with equal probability, then an image of it
    compile: bool = False  # torch.compile the training forward pass (first steps slower while it compiles)
    #: DDP (torchrun) only: SyncBatchNorm, batch-norm statistics over the global batch instead of each rank's slice
    #: (CUDA only); off, the statistics are per rank
    sync_bn: bool = False


class RunConfig(Strict):
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    objective: list[Union[str, dict[str, Any]]] = ["ce"]
    hooks: list[Union[str, dict[str, Any]]] = []
    teacher: str | None = None  # legacy: moved into every objective entry that takes a teacher (see below)
    #: tracker mirrors of metrics and config (the store stays the source of truth): tensorboard (the run folder's tensorboard/),
    #: mlflow (MLFLOW_TRACKING_URI); each needs its extra, e.g. pip install 'r18lab[mlflow]'
    track: list[str] = []

    @model_validator(mode="before")
    @classmethod
    def _teacher_into_objectives(cls, tree: Any) -> Any:
        """`teacher=PATH` (the pre-0.2 form) becomes the `teacher` parameter of each teacher entry (kd, hint) lacking one."""
        if not isinstance(tree, dict) or not tree.get("teacher"):
            return tree
        tree = dict(tree)
        path = tree.pop("teacher")
        entries = []
        for e in tree.get("objective", ["ce"]):
            if isinstance(e, str) and e in TEACHER_OBJECTIVES:
                e = {"name": e}
            if isinstance(e, dict) and e.get("name") in TEACHER_OBJECTIVES and "teacher" not in e:
                e = {**e, "teacher": path}
            entries.append(e)
        tree["objective"] = entries
        return tree

    @field_validator("track")
    @classmethod
    def _trackers(cls, v: list[str]) -> list[str]:
        from .train.trackers import TRACKERS
        bad = [n for n in v if n not in TRACKERS]
        if bad or len(set(v)) != len(v):
            raise ValueError(f"{'unknown tracker ' + repr(bad[0]) if bad else 'a tracker named twice'}; "
                             f"choose from: {', '.join(TRACKERS.names())}")
        return v

    @field_validator("objective")
    @classmethod
    def _non_empty(cls, v: list) -> list:
        if not v:
            raise ValueError("at least one objective is needed, e.g. objective=[ce]")
        return v

    @model_validator(mode="after")
    def _milestones(self) -> "RunConfig":
        if self.schedule.name == "multistep" and not self.schedule.milestones:
            raise ValueError("schedule.milestones must list epochs for schedule.name=multistep")
        return self


#: objectives whose `teacher` parameter names frozen weights (their identity enters the run identity)
TEACHER_OBJECTIVES = ("kd", "hint")


def specs(entries: list[Union[str, dict[str, Any]]], kind: str) -> list[tuple[str, dict[str, Any]]]:
    """Normalise `[name | {name: ..., **params}]` into (name, params) pairs."""
    out = []
    for e in entries:
        if isinstance(e, str):
            out.append((e, {}))
        elif isinstance(e, dict) and isinstance(e.get("name"), str):
            params = {k: v for k, v in e.items() if k != "name"}
            out.append((e["name"], params))
        else:
            raise ConfigError(f"each {kind} must be a name or a mapping with a 'name' key, got {e!r}")
    return out


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {dotted!r}: {p!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(items: list[str]) -> dict:
    """`a.b=value` strings → nested dict; values are parsed as YAML (`[main, fr]`, `0.1`, `true`)."""
    tree: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.epochs=5)")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_path(tree, key.strip(), value)
    return tree


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist; give a YAML file path (see recipes/)")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data


def _format_error(err: ValidationError) -> str:
    e = err.errors()[0]
    key = ".".join(str(x) for x in e["loc"]) or "config"
    if e["type"] == "extra_forbidden":
        section = _section_for(e["loc"][:-1])
        valid = ", ".join(section.model_fields) if section else ""
        return f"unknown config key {key!r}; valid keys here: {valid}"
    if e["type"] == "literal_error":
        return f"invalid value for {key!r}: {e['input']!r}; {e['msg'].replace('Input should be ', 'choose ')}"
    if e["type"] == "value_error" and isinstance(e.get("input"), dict):  # a check across a section's keys
        return f"invalid {key}: {e['msg'].removeprefix('Value error, ')}"
    return f"invalid value for {key!r}: {e.get('input')!r} ({e['msg']})"


def _section_for(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        options = (field.annotation, *get_args(field.annotation)) if field is not None else ()
        found = [a for a in options if isinstance(a, type) and issubclass(a, BaseModel)]  # X or Optional[X]
        if not found:
            return None
        model = found[0]
    return model


def build_config(tree: dict) -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def resolve_tree(path: str | Path | None, overrides: list[str] | None, scale: str | None) -> dict:
    """File (optional) → its `scales[scale]` overlay → key=value overrides, as a plain tree (not validated)."""
    tree = read_yaml(path) if path else {}
    scales = tree.pop("scales", {}) or {}
    if scale is not None:
        if scale not in scales:
            raise ConfigError(f"unknown scale {scale!r}; {path or 'the config'} defines: {', '.join(scales) or 'none'}")
        tree = _deep_merge(tree, scales[scale])
    return _deep_merge(tree, parse_overrides(overrides or []))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                scale: str | None = None) -> RunConfig:
    """File (optional) → its `scales[scale]` overlay → overrides → validated RunConfig."""
    tree = resolve_tree(path, overrides, scale)
    tree.pop("protocol", None)
    return build_config(tree)


def config_dict(cfg: RunConfig) -> dict:
    return json.loads(cfg.model_dump_json())


# -- run identity -----------------------------------------------------------------------------------------
#: Keys that change how a run executes but not its result; they are left out of the run identity.
EXECUTION_ONLY = ("train.progress", "train.threads", "train.device", "train.eval_batch_size", "train.compile",
                  "track")

#: Bump when a code change makes the same configuration give a different result; runs stored under an
#: older schema then no longer count as done. Adding a config key whose default keeps the old behaviour
#: does not need a bump: the identity covers only values that differ from the defaults.
IDENTITY_SCHEMA = 1


def _strip(tree: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.get(p) if isinstance(tree.get(p), dict) else {}
    tree.pop(leaf, None)


def _non_default(tree: Any, default: Any) -> Any:
    """The part of `tree` that differs from `default` (recursively for mappings)."""
    if isinstance(tree, dict) and isinstance(default, dict):
        out = {}
        for k, v in tree.items():
            if k not in default:
                out[k] = v
            elif v != default[k]:
                out[k] = _non_default(v, default[k])
        return out
    return tree


def result_config(cfg: "RunConfig | dict") -> dict:
    """The result-affecting part of a run config: execution-only keys removed, defaults left out."""
    tree = config_dict(cfg) if isinstance(cfg, RunConfig) else copy.deepcopy(cfg)
    default = config_dict(RunConfig())
    for key in EXECUTION_ONLY:
        _strip(tree, key)
        _strip(default, key)
    return _non_default(tree, default)


def _weight_slots(tree: dict) -> list[tuple[Any, Any]]:
    """(container, key) of every weights path a run config reads: each objective's `teacher` (a path or a list),
    each `teachers[i].checkpoint` (consolidate), and `model.init_from.checkpoint`."""
    slots: list[tuple[Any, Any]] = []
    for e in tree.get("objective", []) if isinstance(tree.get("objective"), list) else []:
        if not isinstance(e, dict):
            continue
        t = e.get("teacher")
        if isinstance(t, str):
            slots.append((e, "teacher"))
        elif isinstance(t, list):
            slots += [(t, i) for i, x in enumerate(t) if isinstance(x, str)]
        for entry in e.get("teachers") or [] if isinstance(e.get("teachers"), list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("checkpoint"), str):
                slots.append((entry, "checkpoint"))
    init = (tree.get("model") or {}).get("init_from") if isinstance(tree.get("model"), dict) else None
    if isinstance(init, dict) and isinstance(init.get("checkpoint"), str):
        slots.append((init, "checkpoint"))
    return slots


def teacher_paths(cfg: "RunConfig | dict") -> list[str]:
    """Paths of the frozen weights a run reads (the objectives' teachers, model.init_from), in order."""
    tree = config_dict(cfg) if isinstance(cfg, RunConfig) else cfg
    return [c[k] for c, k in _weight_slots(tree)]


def run_identity(cfg: "RunConfig | dict", teacher_ids: dict[str, str] | None = None) -> str:
    """16 hex digits of sha256 over (schema, result-affecting config) with each weights path it reads (teachers,
    init_from) replaced by that file's run identity (`teacher_ids[path]`), so moving a teacher's folder keeps a
    student's identity."""
    import hashlib
    tree = result_config(cfg)
    teacher_ids = teacher_ids or {}
    for container, key in _weight_slots(tree):
        container[key] = teacher_ids.get(container[key], container[key])
    text = json.dumps({"schema": IDENTITY_SCHEMA, "config": tree}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
