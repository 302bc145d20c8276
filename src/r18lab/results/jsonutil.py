"""JSON encoding shared by the run store and the metrics log (numpy scalars, paths, canonical form)."""
from __future__ import annotations

import json
import os
from typing import Any


def to_jsonable(obj: Any) -> Any:
    """`json.dumps(default=...)` hook: numpy scalars/arrays -> Python numbers/lists, paths -> str."""
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy scalar or array, torch tensor
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def dumps(obj: Any) -> str:
    """Compact one-line JSON (NaN/Infinity allowed, as Python's json reads them back)."""
    return json.dumps(obj, default=to_jsonable, separators=(",", ":"))


def canonical(obj: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, ASCII only -> equal dicts give equal strings."""
    return json.dumps(obj, default=to_jsonable, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
