"""Process-wide PyTorch settings a run needs (threads, deterministic algorithms, cuDNN flags), set on entry and
restored on exit, so one run never changes the next one's behaviour in the same process."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from ..errors import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    """`auto` → CUDA if present, else Apple MPS, else CPU; a named device must exist on this machine."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"invalid value for 'train.device': {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"train.device={name} but this machine has no usable CUDA device; "
                              "use train.device=auto or cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"train.device={name} but only cuda:0..cuda:{count - 1} exist; pick one of those")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"train.device={name} but MPS is not available here; use train.device=auto or cpu")
    return device


@contextlib.contextmanager
def run_environment(threads: int | None, deterministic: bool) -> Iterator[None]:
    """Set thread count and determinism for one run; restore every changed global on exit."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    try:
        if threads:
            torch.set_num_threads(threads)
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        yield
    finally:
        n, det, warn_only, bench, cudnn_det, cublas = saved
        torch.set_num_threads(n)
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        torch.backends.cudnn.benchmark = bench
        torch.backends.cudnn.deterministic = cudnn_det
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas
