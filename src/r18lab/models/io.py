"""Model I/O: weights as safetensors whose metadata carries the architecture, the preprocessing and the run
identity, so whoever loads them (eval, export, a teacher, a probe, an analysis) rebuilds and feeds the model
exactly as it was trained (the role of timm's `pretrained_cfg`)."""
from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import atomic_target
from ..errors import CheckpointError, R18Error

MODEL_META_KEY = "r18lab.model"
PREPROCESSING_META_KEY = "r18lab.preprocessing"
IDENTITY_META_KEY = "r18lab.run_identity"


@dataclass(frozen=True)
class Preprocessing:
    """How raw images become the model's input: uint8 H×W×C in `channel_order` at `input_size` (C, H, W),
    then (x/255 − mean)/std per channel. `classes` names the output units in order."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int, int]
    channel_order: str = "RGB"
    classes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        c = self.input_size[0]
        if len(self.mean) != c or len(self.std) != c:
            raise CheckpointError(f"preprocessing has {len(self.mean)} means / {len(self.std)} stds for {c} channels")
        if any(not (s > 0) for s in self.std):
            raise CheckpointError(f"preprocessing std must be positive, got {list(self.std)}")

    @classmethod
    def identity(cls, input_size: Sequence[int], classes: Sequence[str] = ()) -> "Preprocessing":
        """No normalisation beyond /255 (`data.normalize=none`)."""
        c = int(input_size[0])
        return cls((0.0,) * c, (1.0,) * c, tuple(int(v) for v in input_size), _channel_order(c), tuple(classes))

    @classmethod
    def of(cls, mean: Sequence[float], std: Sequence[float], input_size: Sequence[int],
           classes: Sequence[str] = ()) -> "Preprocessing":
        c = int(input_size[0])
        return cls(tuple(float(m) for m in mean), tuple(float(s) for s in std),
                   tuple(int(v) for v in input_size), _channel_order(c), tuple(str(k) for k in classes))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str, where: object = "checkpoint") -> "Preprocessing":
        try:
            d = json.loads(text)
            return cls(tuple(d["mean"]), tuple(d["std"]), tuple(d["input_size"]), d.get("channel_order", "RGB"),
                       tuple(d.get("classes", ())))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{where} has corrupt preprocessing metadata ({type(e).__name__}: {e}); "
                                  "re-export the weights from their run directory") from None

    def normalizer(self) -> "Normalizer":
        return Normalizer(list(self.mean), list(self.std))

    def check_images(self, shape: Sequence[int], what: object) -> None:
        """One line if uint8 images of N×C×H×W `shape` are not what the model was trained on."""
        c, h, w = (int(v) for v in shape[1:])
        if (c, h, w) != tuple(self.input_size):
            hint = (f"pass image_size={self.input_size[1]}" if c == self.input_size[0]
                    else f"pass channels={self.input_size[0]} (data.channels={self.input_size[0]}) to read the "
                         f"images as {self.channel_order}")
            raise R18Error(f"{what} gives {c}×{h}×{w} images but the model was trained on "
                           f"{'×'.join(map(str, self.input_size))}; {hint}")


def _channel_order(c: int) -> str:
    return {1: "L", 3: "RGB"}.get(c, f"{c}-channel")


class Normalizer(nn.Module):
    """uint8 N×C×H×W → float32 (x/255 − mean)/std, for evaluation and prediction."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


def renormalize(x: torch.Tensor, source: Preprocessing, target: Preprocessing) -> torch.Tensor:
    """A batch normalised with `source` re-expressed with `target`'s mean/std: x·σs/σt + (μs − μt)/σt (exact, affine)."""
    if source.mean == target.mean and source.std == target.std:
        return x
    view = (1, -1, 1, 1)
    ms, ss, mt, st = (torch.tensor(v, dtype=x.dtype, device=x.device).view(view)
                      for v in (source.mean, source.std, target.mean, target.std))
    return x * (ss / st) + (ms - mt) / st


# -- files -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def writable_target(path: Path) -> Iterator[Path]:
    """`atomic_target(path)` (folder created) whose I/O failures (disk full, no permission) are one clear line."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_target(path) as tmp:
            yield tmp
    except (OSError, SafetensorError) as e:  # safetensors reports I/O failures (e.g. ENOSPC) as its own error
        reason = getattr(e, "strerror", None) or e
        raise R18Error(f"cannot write {path}: {reason}; free disk space or choose a writable --out "
                       "(the previous file, if any, is unchanged)") from None


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors file written atomically (temp file + fsync + rename)."""
    with writable_target(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def read_metadata(path: Path) -> dict[str, str]:
    """Only the metadata of a safetensors file (no tensors read); a missing or corrupt file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; give the path of a model.safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a safetensors file ({e}); "
                              "re-export it or point to another file") from None


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file and its metadata; a missing or corrupt file is a CheckpointError."""
    meta = read_metadata(path)
    try:
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a safetensors file ({e}); "
                              "re-export it or point to another file") from None


#: the normalisation torchvision's and timm's ImageNet-pretrained ResNets expect (their `transforms` / pretrained_cfg)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (and metadata) of a weights file: safetensors, or a PyTorch `.pth`/`.pt` state dict read with
    `torch.load(weights_only=True)` (tensors and plain containers only, no code). A `{"state_dict": ...}` or
    `{"model": ...}` wrapper is unwrapped and a `module.` prefix (DataParallel) dropped."""
    path = Path(path)
    if path.suffix.lower() not in (".pth", ".pt", ".bin"):
        return read_tensors(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; give the path of a weights file")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # the restricted unpickler refuses anything but tensors and containers
        raise CheckpointError(f"{path} is not a plain PyTorch state dict ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120]}); save it with torch.save(model.state_dict(), path) "
                              "or convert it to safetensors") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors; save one with torch.save(model.state_dict(), "
                              "path)")
    return {k.removeprefix("module."): v for k, v in obj.items()}, {}


def save_model(model: nn.Module, path: Path, model_spec: dict[str, Any] | None = None,
               state: dict[str, torch.Tensor] | None = None, preprocessing: Preprocessing | None = None,
               identity: str | None = None) -> None:
    """Weights (or `state`) with the architecture, preprocessing and run identity in the metadata."""
    meta: dict[str, str] = {}
    if model_spec is not None:
        meta[MODEL_META_KEY] = json.dumps(model_spec)
    if preprocessing is not None:
        meta[PREPROCESSING_META_KEY] = preprocessing.to_json()
    if identity is not None:
        meta[IDENTITY_META_KEY] = identity
    atomic_save_tensors(state if state is not None else model.state_dict(), path, meta or None)


def state_mismatch(own: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], optional=()) -> str | None:
    """How `tensors` fails to fit a model whose state is `own` (first missing, unexpected or mis-shaped key), or
    None when it fits; keys in `optional` may be absent."""
    missing = sorted(set(own) - set(tensors) - set(optional))
    extra = sorted(set(tensors) - set(own))
    bad = [k for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing:
        return f"missing {missing[:3]}"
    if extra:
        return f"unexpected {extra[:3]}"
    if bad:
        return f"shape of {bad[0]} is {tuple(tensors[bad[0]].shape)}, the model wants {tuple(own[bad[0]].shape)}"
    return None


def load_weights(model: nn.Module, path: Path) -> dict[str, str]:
    """Strictly load weights into `model`; a mismatch names the first differing keys."""
    tensors, meta = read_tensors(path)
    detail = state_mismatch(model.state_dict(), tensors)
    if detail:
        raise CheckpointError(f"checkpoint {path} does not fit this architecture ({detail}); "
                              "build the model with the config the checkpoint was trained with")
    model.load_state_dict(tensors, strict=True)
    return meta


def spec_from_meta(meta: dict[str, str], path: Path) -> dict[str, Any]:
    if MODEL_META_KEY not in meta:
        raise CheckpointError(f"{path} carries no r18lab model description; pass the architecture explicitly")
    try:
        spec = json.loads(meta[MODEL_META_KEY])
    except ValueError:
        spec = None
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise CheckpointError(f"{path} has corrupt model metadata; re-export the weights from their run directory")
    return spec


def model_spec_of(path: Path) -> dict[str, Any]:
    """The architecture stored in a weights file's metadata."""
    return spec_from_meta(read_metadata(Path(path)), Path(path))


def preprocessing_of(path: Path) -> Preprocessing | None:
    """The preprocessing stored with the weights, or None for files written before it was stored."""
    meta = read_metadata(Path(path))
    return Preprocessing.from_json(meta[PREPROCESSING_META_KEY], path) if PREPROCESSING_META_KEY in meta else None


def output_units(requested: int | None, num_classes: int) -> int:
    """The model's output units: the task's classes, or one logit for a two-class task (`model.num_classes: 1`)."""
    if requested is None or requested == num_classes:
        return num_classes
    if requested == 1 and num_classes == 2:
        return 1
    from ..errors import ConfigError
    raise ConfigError(f"model.num_classes={requested} does not fit the task's {num_classes} classes; drop it, or "
                      "use 1 (one logit with objective=[bce]) on a two-class task")


def model_spec(cfg, num_classes: int) -> dict[str, Any]:
    """Everything `create_model` needs to rebuild a run config's architecture (stored in the weights' metadata)."""
    m = cfg.model
    spec = {"name": m.name, "num_classes": output_units(m.num_classes, num_classes), "stem": m.stem,
            "width": m.width, "heads": list(m.heads), "gate": m.gate, "peers": m.peers, **m.options}
    if m.transforms:
        spec["transforms"] = list(m.transforms)
    if m.init != "default":
        spec["init"] = m.init
    data = getattr(cfg, "data", None)
    if data is not None and getattr(data, "channels", 3) != 3:  # the first layer follows the data's channels
        from ..data.training import input_channels
        channels = input_channels(data)
        if spec.get("in_channels", channels) != channels:
            from ..errors import ConfigError
            raise ConfigError(f"model.options.in_channels={spec['in_channels']} but data.channels="
                              f"{data.channels} gives {channels}-channel images; drop model.options.in_channels")
        if channels != 3:
            spec["in_channels"] = channels
    return spec


def for_weights(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec to build before loading a weights file: transform options the file makes unnecessary (a
    transform's `when_loading`, e.g. linearize's reference checkpoint) replaced, so only the file is read."""
    from ..registry import TRANSFORMS
    from .classifier import split_entry
    out = []
    for entry in spec.get("transforms", []):
        name, params = split_entry(entry, "transform")
        params.update(getattr(TRANSFORMS.get(name), "when_loading", {}) if params else {})
        out.append({"name": name, **params} if params else name)
    return {**spec, "transforms": out} if "transforms" in spec else spec


def build_from_spec(spec: dict[str, Any], loading_weights: bool = False) -> nn.Module:
    """`create_model(**spec)` (with `for_weights` when weights will be loaded into it); a spec the registries
    reject is one line naming the option."""
    from .classifier import create_model
    spec = dict(for_weights(spec) if loading_weights else spec)
    try:
        return create_model(spec.pop("name"), **spec)
    except TypeError as e:
        raise CheckpointError(f"model description {spec} is not buildable ({e}); "
                              "the weights come from another r18lab version or were edited") from None


class LoadedModel(NamedTuple):
    """A rebuilt model with what its file says about it."""

    model: nn.Module
    spec: dict[str, Any]
    preprocessing: Preprocessing | None
    identity: str | None
    path: Path


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Rebuild the model from its metadata, load its weights, return it with preprocessing and identity."""
    path = Path(path)
    meta = read_metadata(path)
    spec = spec_from_meta(meta, path)
    pre = Preprocessing.from_json(meta[PREPROCESSING_META_KEY], path) if PREPROCESSING_META_KEY in meta else None
    model = build_from_spec(spec, loading_weights=True)
    load_weights(model, path)
    return LoadedModel(model.to(device), spec, pre, meta.get(IDENTITY_META_KEY), path)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild a model from the architecture stored in its safetensors metadata and load its weights."""
    return load_checkpoint(path, device).model


def require_preprocessing(loaded: LoadedModel) -> Preprocessing:
    """The stored preprocessing, or one line saying the file predates it and what to do."""
    if loaded.preprocessing is None:
        raise CheckpointError(f"{loaded.path} carries no preprocessing (written before r18lab stored it); "
                              "re-train it, or pass --normalize dataset to recompute mean/std from the data")
    return loaded.preprocessing


def teacher_identity(path: str | Path) -> str:
    """A teacher's identity: the run identity stored in its weights, else sha256 of the file (external weights)."""
    path = Path(path)
    if not path.is_file():
        from ..errors import ConfigError
        raise ConfigError(f"teacher weights {path} do not exist; give the path of a trained model.safetensors")
    stored = None if path.suffix.lower() in (".pth", ".pt", ".bin") else read_metadata(path).get(IDENTITY_META_KEY)
    if stored:
        return stored
    return "sha256:" + file_sha256(path)[:16]


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (hex), read in 1 MiB blocks."""
    import hashlib
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
