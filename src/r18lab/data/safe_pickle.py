"""A restricted unpickler admitting only what the official CIFAR python batches contain."""
from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from ..errors import DataError

try:
    from numpy._core.multiarray import _reconstruct as _RECONSTRUCT
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct as _RECONSTRUCT  # type: ignore[no-redef]

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
"""Every global a CIFAR batch may name: numpy array reconstruction and nothing else."""


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler whose find_class admits ALLOWED_GLOBALS only."""

    def __init__(self, data: bytes, where: str) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.where} is not a CIFAR batch: its pickle refers to the forbidden global {module}.{name}; "
                "use the official CIFAR archive"
            ) from None


def load_cifar_pickle(data: bytes, where: str) -> dict[str, Any]:
    """Unpickle one CIFAR batch or meta file into a dict with str keys; DataError on anything else."""
    try:
        obj = _CifarUnpickler(data, where).load()
    except DataError:
        raise
    except Exception as exc:  # a malformed pickle can raise almost anything
        raise DataError(f"cannot unpickle {where} ({type(exc).__name__}: {exc}); the file is corrupt: re-download it") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where} holds a {type(obj).__name__}, not a CIFAR dict; use the official CIFAR archive")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
