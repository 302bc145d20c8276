import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test gets its own decode cache and results store; nothing touches the user's home."""
    monkeypatch.setenv("R18LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("R18LAB_STORE", str(tmp_path / "store" / "index.sqlite"))
