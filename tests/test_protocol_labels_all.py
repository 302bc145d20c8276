"""Protocols on any dataset (issue 10, item 8): `protocol.labels: all` (compare's default) trains on the full
training set; budgets the data cannot give fail before any run, naming the short class."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from r18lab.cli import main
from r18lab.config import build_config, parse_overrides
from r18lab.data.training import check_pool_size
from r18lab.errors import ConfigError
from r18lab.protocols import lowdata
from r18lab.registry import PROTOCOLS

from helpers import tiny

SYNTH_N = 128  # tiny()'s synthetic training images


def base(*extra: str) -> dict:
    return parse_overrides(tiny(*extra))


def test_compare_defaults_to_the_full_training_set(tmp_path):
    proto = PROTOCOLS.get("compare")("compare", {**base(), "protocol": {"seeds": [0, 1], "methods": ["resnet18"]}},
                                     tmp_path)
    assert proto.settings.labels == ["all"]
    assert [s.tags for s in proto.specs] == [{"method": "resnet18", "labels": SYNTH_N, "seed": s} for s in (0, 1)]
    for spec in proto.specs:
        assert build_config(spec.config).data.labels is None  # the whole set, not a pool of 128
        assert spec.out_dir.parent.parent.name == f"n{SYNTH_N}"
    assert lowdata.LowDataSettings().labels[0] == 1000  # lowdata's own default is unchanged


def test_labels_all_alone_or_after_budgets(tmp_path):
    proto = PROTOCOLS.get("lowdata")("lowdata", {**base(), "protocol": {"labels": [40, "all"], "seeds": [0],
                                                                        "methods": ["resnet18"]}}, tmp_path)
    assert [(s.tags["labels"], build_config(s.config).data.labels) for s in proto.specs] == [(40, 40), (SYNTH_N, None)]
    settings = lowdata.LowDataSettings(labels="all", seeds=[0], methods=["resnet18"])
    assert [s.tags["labels"] for s in lowdata.plan(settings, base(), tmp_path)] == ["all"]  # no size given
    with pytest.raises(ConfigError, match="all .*last"):
        lowdata.parse_settings({"protocol": {"labels": ["all", 40]}})


def test_impossible_balanced_pool_names_the_short_class():
    labels = np.array([0] * 50 + [1] * 7 + [2] * 30)
    with pytest.raises(ConfigError) as err:
        check_pool_size(60, labels, True, ["cat", "BACKGROUND", "dog"], key="protocol.labels")
    msg = str(err.value)
    assert "class 'BACKGROUND' has 7 (13 short" in msg and "data.balanced=false" in msg and "at most 21" in msg
    check_pool_size(60, labels, False, ["cat", "BACKGROUND", "dog"])  # a uniform draw is possible
    with pytest.raises(ConfigError, match="exceeds the 87 training images.*protocol.labels accepts all"):
        check_pool_size(100, labels, False, key="protocol.labels")
    with pytest.raises(ConfigError, match="data.labels=100 exceeds the 87 training images.*drop data.labels"):
        check_pool_size(100, labels, False)


def test_budgets_the_data_cannot_give_fail_before_any_run(tmp_path, capsys):
    root = tmp_path / "imgs"
    for cls, n in (("a", 10), ("b", 3)):
        for i in range(n):
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(root / cls / f"{i}.png")
    recipe = tmp_path / "p.yaml"
    recipe.write_text(f"protocol: {{labels: [4, 8], seeds: [0], methods: [resnet18]}}\ndata: {{source: {root}}}\n")
    out = tmp_path / "proto"
    assert main(["protocol", "lowdata", str(recipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: protocol.labels=8: a class-balanced pool needs 4")
    assert "class 'b' has 2 (2 short" in err and "data.balanced=false" in err  # 2 of b's 3 images train
    assert not out.exists()
    assert main(["protocol", "lowdata", str(recipe), "protocol.labels=[4, 50]", "--out", str(out)]) == 2
    assert "protocol.labels=50 exceeds the 10 training images" in capsys.readouterr().err
