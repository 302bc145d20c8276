"""A trained classifier as the similarity measures see it: images in [0, 1] (float N×C×H×W) in, one head's logits
out, its own stored normalisation applied inside — so measures compare models trained with different
preprocessing on the very same pixels, and attacks and image transforms work in pixel space."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ..errors import ConfigError
from ..models.io import Preprocessing, load_checkpoint, require_preprocessing


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every module in eval mode (BN on running statistics, no dropout); each module's own flag restored on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@dataclass
class Net:
    """`model` (a Classifier), its `preprocessing`, the `head` whose logits count, and a display `name`."""

    model: nn.Module
    preprocessing: Preprocessing
    head: str = "main"
    name: str = ""

    def __post_init__(self) -> None:
        heads = list(getattr(self.model, "logit_names", getattr(self.model, "head_names", [])))
        if heads and self.head not in heads:
            raise ConfigError(f"{self.name or 'model'} has no head {self.head!r}; its heads are {heads}")
        self.model.eval()

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu", head: str = "main", name: str = "") -> "Net":
        loaded = load_checkpoint(path, device)
        return cls(loaded.model, require_preprocessing(loaded), head, name or str(path))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def classes(self) -> tuple[str, ...]:
        return self.preprocessing.classes

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """(x − mean)/std per channel, x in [0, 1] (differentiable: attacks take gradients through it)."""
        mean = torch.tensor(self.preprocessing.mean, dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
        std = torch.tensor(self.preprocessing.std, dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
        return (x01 - mean) / std

    def output(self, x01: torch.Tensor):
        """The model's whole output (ModelOutput) on pixels in [0, 1]; gradients flow when x01 requires them."""
        return self.model(self.normalize(x01.to(self.device)))

    def logits(self, x01: torch.Tensor) -> torch.Tensor:
        return self.output(x01).logits[self.head]

    @torch.no_grad()
    def predict(self, x01: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """argmax labels (CPU int64), in batches."""
        return torch.cat([self.logits(x01[i:i + batch_size]).argmax(1).cpu() for i in range(0, len(x01), batch_size)])


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 N×C×H×W → float32 in [0, 1]."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ConfigError(f"expected uint8 N×C×H×W images, got {images.dtype} {tuple(images.shape)}")
    return images.float() / 255.0


def same_classes(teacher: Net, students: list[Net]) -> None:
    """One line when a student's classes differ from the teacher's (the measures compare argmax labels)."""
    for s in students:
        if teacher.classes and s.classes and tuple(s.classes) != tuple(teacher.classes):
            raise ConfigError(f"student {s.name} was trained on classes {list(s.classes)[:4]}… but the teacher "
                              f"{teacher.name} on {list(teacher.classes)[:4]}…; compare models of the same task")
