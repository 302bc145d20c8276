"""Typed, validated run configuration: a YAML file, an optional named scale, then key=value overrides."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(Strict):
    crop: Union[int, None, Literal["auto"]] = "auto"  # "auto": the image size; None: no crop
    padding: int = Field(4, ge=0)
    pad_mode: Literal["zero", "reflect"] = "zero"
    flip: bool = True
    cutout: int = Field(0, ge=0)


class DataConfig(Strict):
    source: str = "digits"
    train_split: str = "train"
    test_split: str = "test"
    labels: int | None = Field(None, ge=1, description="labelled pool size (nested, class-balanced); None = all")
    balanced: bool = True
    split_seed: int | None = None  # None: the run's seed
    image_size: int | None = Field(None, ge=1)
    options: dict[str, Any] = {}  # passed to the source, e.g. {num_classes: 4, n: 512} for synthetic
    normalize: Literal["dataset", "none"] = "dataset"
    augment: AugmentConfig = AugmentConfig()


class ModelConfig(Strict):
    name: str = "resnet18"
    stem: Literal["cifar", "imagenet"] = "cifar"
    width: float = Field(1.0, gt=0)
    heads: list[str] = ["main"]
    gate: float | None = None
    peers: int = Field(1, ge=1)
    options: dict[str, Any] = {}


class OptimConfig(Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    no_decay_norm_bias: bool = False
    betas: tuple[float, float] = (0.9, 0.999)


class ScheduleConfig(Strict):
    name: Literal["cosine", "multistep", "constant"] = "cosine"
    milestones: list[int] = []  # epochs, for multistep
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
    progress: Literal["auto", "bar", "lines", "none"] = "auto"


class RunConfig(Strict):
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    objective: list[Union[str, dict[str, Any]]] = ["ce"]
    hooks: list[Union[str, dict[str, Any]]] = []
    teacher: str | None = None  # path of a frozen teacher's weights (model.safetensors), for distillation

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
    return f"invalid value for {key!r}: {e.get('input')!r} ({e['msg']})"


def _section_for(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
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
