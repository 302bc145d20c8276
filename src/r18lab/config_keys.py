"""The reference of every config key, generated at run time from the typed config (`RunConfig` and its sections).

A key's description is its `Field(description=...)`, else the `#:` comment block above the field, else the comment
at the end of its line (both read from the source of `config.py`, so they need no extra work when a key is added),
else a line of `NOTES` below (for keys config.py leaves undocumented; a test checks each still exists), else — for a
section — the first line of its class docstring. Range constraints (`Field(ge=1)`, ...) are read from the fields.
`r18lab config --keys [--markdown | --json]` prints it.
"""
from __future__ import annotations

import ast
import inspect
import io
import textwrap
import tokenize
import types
from dataclasses import asdict, dataclass
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .config import RunConfig


#: descriptions of keys that config.py documents neither by Field(description=...) nor by a comment; a comment
#: or description added there takes precedence. tests/test_config_keys.py checks that every key here exists.
NOTES = {
    "seed": "the run's seed: initialisation, data order, augmentation (and the split, unless data.split_seed)",
    "data.source": "digits, synthetic, a CIFAR archive, or an image folder / .tar(.gz) path",
    "data.train_split": "the source's split trained on",
    "data.test_split": "the source's split evaluated on",
    "data.balanced": "with data.labels: draw the labelled pool class-balanced",
    "data.image_size": "resize images to N×N (passed to the source); None: the source's size",
    "data.normalize": "dataset: per-channel mean/std of the training split; none: pixels / 255 only",
    "data.augment.padding": "pixels of padding before the random crop",
    "data.augment.pad_mode": "how the padding is filled",
    "data.augment.flip": "random horizontal flip",
    "data.augment.cutout": "side of a random square set to zero (0: off)",
    "data.augment.random_resized_crop.scale": "area fraction [lo, hi] of the crop",
    "data.augment.random_resized_crop.ratio": "aspect ratio w/h [lo, hi] of the crop",
    "model.name": "backbone: resnet18, wrn, mobilenet_v2, ... (see `r18lab models info NAME`)",
    "model.stem": "cifar: 3×3 conv, no max-pool; imagenet: 7×7 stride 2 + max-pool",
    "model.width": "channel width multiplier",
    "model.gate": "gradient gate of the main head's input (0: the main head does not train the backbone); "
                  "None: 0 with a head that gates main (fr), else 1",
    "model.peers": "co-trained copies of the model (dml, kdcl); peer i > 0 logs `peer<i>/<head>`",
    "model.options": "backbone and head options, e.g. {fr_dim: 64}",
    "model.init_from.checkpoint": "the weights file to start from (model.safetensors)",
    "model.init_from.heads": "{this model's head: the checkpoint's head} to copy",
    "model.init_from.preprocessing": "checkpoint: the checkpoint's stored normalisation; data: recomputed",
    "optim.name": "optimizer",
    "optim.lr": "base learning rate (the schedule scales it)",
    "optim.momentum": "SGD momentum",
    "optim.nesterov": "SGD Nesterov momentum",
    "optim.weight_decay": "L2 weight decay (decoupled for adamw)",
    "optim.no_decay_norm_bias": "no weight decay on normalisation weights and biases",
    "optim.betas": "AdamW betas",
    "schedule.gamma": "multistep: factor at each milestone",
    "schedule.warmup_epochs": "linear warm-up from 0 over this many epochs",
    "schedule.min_lr": "the learning rate the schedule decays to",
    "train.epochs": "passes over the training set",
    "train.batch_size": "training batch size",
    "train.eval_batch_size": "evaluation batch size (does not change results)",
    "train.drop_last": "drop each epoch's last incomplete batch",
    "train.label_smoothing": "label smoothing of the cross-entropy",
    "train.grad_clip": "clip the global gradient norm to this; None: off",
    "train.amp": "mixed precision (autocast) on the device",
    "train.channels_last": "channels-last memory format",
    "train.deterministic": "deterministic algorithms (slower; warns where none exists)",
    "train.device": "auto, cpu, cuda, cuda:1, mps, ...",
    "train.threads": "CPU threads during the run; None: PyTorch's default",
    "train.eval_every": "evaluate every N epochs (and after the last)",
    "train.progress": "auto: a bar on a terminal, lines otherwise",
    "objective": "loss terms, summed: names or {name: ..., weight: ..., ...} (ce, kd, dml, kdcl, hint, ...)",
    "hooks": "training hooks: names or {name: ..., ...} (tempbalance, prune, detach_after, ema, ...)",
}


@dataclass(frozen=True)
class ConfigKey:
    key: str  # dotted, e.g. data.augment.flip
    type: str  # e.g. int | None
    default: str  # inline YAML (what a key=value override takes), or "(required)"
    description: str
    range: str = ""  # e.g. ">= 1", "> 0, <= 64"
    section: bool = False  # an optional section (e.g. model.init_from): its own keys follow it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sections(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field's annotation holds (X, X | None, Union[str, X], ...)."""
    options = (annotation, *get_args(annotation))
    return [a for a in options if isinstance(a, type) and issubclass(a, BaseModel)]


def type_name(t: Any) -> str:
    """A readable type: `int | None`, `"cifar" | "imagenet"`, `list[str | dict[str, Any]]`."""
    if t is type(None):
        return "None"
    if t is Any:
        return "Any"
    origin, args = get_origin(t), get_args(t)
    if origin is Literal:
        return " | ".join(f'"{a}"' if isinstance(a, str) else repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]" if args else name
    if isinstance(t, type):
        return t.__name__
    return str(t).replace("typing.", "")


_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def value_range(metadata: list[Any]) -> str:
    """`Field(ge=..., gt=..., le=..., lt=..., allow_inf_nan=False)` as text: ">= 1", "> 0, <= 64, finite"."""
    parts = []
    for m in metadata:
        for attr, sign in _BOUNDS:
            if getattr(m, attr, None) is not None:
                parts.append(f"{sign} {getattr(m, attr):g}")
        if getattr(m, "allow_inf_nan", None) is False:
            parts.append("finite")
    return ", ".join(parts)


def _plain(v: Any) -> Any:
    if isinstance(v, BaseModel):
        return _plain(v.model_dump())
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def inline_yaml(v: Any) -> str:
    """`v` as one line of YAML (flow style), as a key=value override would give it."""
    text = yaml.safe_dump(_plain(v), default_flow_style=True, width=10**9, sort_keys=False).strip()
    return text.removesuffix("...").strip()


class _BlockDumper(yaml.SafeDumper):
    """Mappings as blocks, lists of plain values inline (`heads: [main, fr]`): a config as one would write it."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flat = all(not isinstance(x, (list, dict)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_BlockDumper.add_representer(list, _represent_list)


def config_yaml(tree: dict[str, Any]) -> str:
    """A config tree as block YAML that `train` reads back unchanged."""
    return yaml.dump(_plain(tree), Dumper=_BlockDumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=10**9).rstrip()


def source_comments(cls: type) -> dict[str, str]:
    """{field: comment} from the class source: the `#:` block above a field, else the comment ending its line.
    Empty when the source is not available (e.g. a model built at run time)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    except (tokenize.TokenError, SyntaxError, IndexError, AttributeError):
        return {}
    lines = source.splitlines()
    out: dict[str, str] = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, line = [], node.lineno - 1
        while line >= 1 and lines[line - 1].lstrip().startswith("#:"):
            above.insert(0, lines[line - 1].lstrip()[2:].strip())
            line -= 1
        trailing = next((comments[n] for n in range(node.end_lineno or node.lineno, node.lineno - 1, -1)
                         if n in comments and not lines[n - 1].lstrip().startswith("#")), None)
        text = " ".join(above) if above else trailing.lstrip("#").strip() if trailing else ""
        if text:
            out[node.target.id] = text
    return out


def _doc_line(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def config_keys(root: type[BaseModel] = RunConfig, prefix: str = "") -> list[ConfigKey]:
    """Every key of `root`, depth first in declaration order: each leaf, and each optional section followed by its
    own keys (a section that is always there, like `data`, is only a prefix)."""
    out: list[ConfigKey] = []
    comments = source_comments(root)
    for name, field in root.model_fields.items():
        key = f"{prefix}{name}"
        sections = _sections(field.annotation)
        if sections and (field.annotation in sections):  # a plain section: only its keys
            out += config_keys(sections[0], f"{key}.")
            continue
        default = field.get_default(call_default_factory=True)
        desc = (field.description or comments.get(name) or NOTES.get(key)
                or (_doc_line(sections[0]) if sections else ""))
        out.append(ConfigKey(key, type_name(field.annotation),
                             "(required)" if default is PydanticUndefined else inline_yaml(default), desc,
                             value_range(field.metadata), section=bool(sections)))
        if sections:
            out += config_keys(sections[0], f"{key}.")
    return out


def leaf_keys(root: type[BaseModel] = RunConfig) -> list[str]:
    return [k.key for k in config_keys(root)]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def keys_markdown(keys: list[ConfigKey]) -> str:
    """A markdown table: key, type, default, description."""
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    rows += [f"| `{_cell(k.key)}` | `{_cell(k.type)}`{f' ({_cell(k.range)})' if k.range else ''} | "
             f"`{_cell(k.default)}` | {_cell(k.description)} |" for k in keys]
    return "\n".join(rows)


def keys_text(keys: list[ConfigKey]) -> str:
    """One line per key: key, type, `= default`, then the description on its own indented line."""
    width = max(len(k.key) for k in keys)
    lines = []
    for k in keys:
        lines.append(f"{k.key:<{width}}  {k.type}{f' ({k.range})' if k.range else ''} = {k.default}")
        if k.description:
            lines.append(f"{'':<{width}}    {k.description}")
    return "\n".join(lines)
