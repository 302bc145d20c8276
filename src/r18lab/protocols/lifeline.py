"""Worker processes die with their parent: Linux's PR_SET_PDEATHSIG, and a thread watching os.getppid() as the
portable fallback. Standard library only."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, use_prctl: bool = True, poll: float = 0.5) -> None:
    """SIGTERM this process when `parent` dies. prctl's signal follows the death of the parent *thread* that
    started this process (the pool starts workers from the caller's thread); the watcher covers other systems
    and a parent that died before prctl took effect."""
    if use_prctl and sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        os.kill(os.getpid(), signal.SIGTERM)

    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="r18lab-parent-watch", daemon=True).start()
