"""`r18lab data cache list|clear [SOURCE]`: where the decode cache is, what each entry holds and its size on
disk; deleting entries (all, or one source's) only with --yes."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from .cache import CACHE_ENV, cache_root, list_entries, matching_entries, remove_entry


def human(size: int) -> str:
    """Bytes as B / KB / MB / GB (powers of 1024)."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def run_cache_command(action: str, rest: list[str], *, yes: bool = False, everything: bool = False,
                      as_json: bool = False) -> int:
    """list: print the cache root and one line per entry; clear [SOURCE]: delete entries (only with yes)."""
    root = cache_root()
    if action not in ("list", "clear"):
        raise ConfigError(f"`data cache` takes list or clear, got {action!r}; e.g. r18lab data cache list")
    if len(rest) > (1 if action == "clear" else 0):
        raise ConfigError(f"`data cache {action}` takes {'at most one SOURCE' if action == 'clear' else 'no argument'}"
                          f", got {' '.join(rest)}")
    rows = list_entries(root)
    if action == "list":
        if as_json:
            print(json.dumps({"root": str(root), "total_bytes": sum(r["size_bytes"] for r in rows), "entries": rows},
                             indent=2))
            return 0
        print(f"cache: {root} (set {CACHE_ENV} to move it); {len(rows)} entries, "
              f"{human(sum(r['size_bytes'] for r in rows))}")
        for r in rows:
            what = r["source"] if r["kind"] == "decode" else f"({r['kind']})"
            opts = {k: v for k, v in (r.get("options") or {}).items() if v is not None}
            extra = f" {json.dumps(opts, sort_keys=True)}" if opts else ""
            print(f"{human(r['size_bytes']):>10}  {r['entry']}  {what}{extra}")
        return 0
    source = rest[0] if rest else None
    chosen = matching_entries(rows, source, everything)
    if source is not None and not chosen:
        sources = sorted({r["source"] for r in rows if r["source"]})
        raise ConfigError(f"no cache entry of {source}; cached sources: {', '.join(sources) or 'none'} "
                          "(r18lab data cache list shows the entries)")
    size = sum(r["size_bytes"] for r in chosen)
    if not yes:
        for r in chosen:
            print(f"would delete {human(r['size_bytes']):>10}  {r['entry']}  {r['source'] or '(' + r['kind'] + ')'}")
        print(f"nothing deleted: add --yes to delete these {len(chosen)} entries ({human(size)}) from {root}")
        return 0
    removed = [r for r in chosen if remove_entry(Path(r["path"]))]
    kept = len(chosen) - len(removed)
    print(f"deleted {len(removed)} entries ({human(sum(r['size_bytes'] for r in removed))}) from {root}"
          + (f"; kept {kept} being written by a running process" if kept else ""))
    return 0
