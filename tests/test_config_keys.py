"""`r18lab config --keys` (every key of the typed config, generated at run time) and `r18lab config show`."""
import json
import re
from pathlib import Path
from typing import Literal

import pytest
import yaml
from pydantic import BaseModel, Field, create_model

from r18lab.cli import main
from r18lab.config import RunConfig, Strict, TrainConfig, config_dict, load_config
from r18lab.config_keys import NOTES, config_keys, keys_markdown, leaf_keys, source_comments, type_name

ROOT = Path(__file__).resolve().parents[1]
KEYS_START, KEYS_END = "<!-- config-keys:start -->", "<!-- config-keys:end -->"


def run(argv, capsys):
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's one-line errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def flat_keys(tree, prefix=""):
    """Dotted paths of a config tree's leaves: a mapping is followed where it is a section (its keys are listed,
    e.g. `data.augment`), else it is one value (`data.options`, `optim.lr_groups`)."""
    listed = leaf_keys()
    out = []
    for k, v in tree.items():
        if isinstance(v, dict) and any(key.startswith(f"{prefix}{k}.") for key in listed):
            out += flat_keys(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def test_every_leaf_key_of_runconfig_is_listed():
    keys = leaf_keys()
    assert len(keys) == len(set(keys))
    default = flat_keys(config_dict(RunConfig()))
    assert set(default) <= set(keys), set(default) - set(keys)
    # optional sections (None by default) list their own keys too
    filled = config_dict(load_config(None, ["model.init_from=w.safetensors", "data.augment.padding=0",
                                            "data.augment.random_resized_crop=true"]))
    assert set(flat_keys(filled)) <= set(keys), set(flat_keys(filled)) - set(keys)
    assert set(keys) - set(default) - set(flat_keys(filled)) == set()  # nothing listed that is no key


def walk(model: type[BaseModel], prefix=""):
    """Every key of a pydantic model tree, by walking its fields (sections: their keys)."""
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from walk(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_a_new_field_appears_without_touching_the_reference():
    class NewSection(Strict):
        knob: int = Field(3, ge=1, description="a knob added later")
        mode: Literal["a", "b"] = "a"

    NewTrain = create_model("NewTrain", __base__=TrainConfig, warmup_knob=(float, 0.5))
    Extended = create_model("Extended", __base__=RunConfig, extra=(NewSection, NewSection()),
                            train=(NewTrain, NewTrain()))
    keys = {k.key: k for k in config_keys(Extended)}
    assert set(walk(Extended)) <= set(keys)
    assert keys["extra.knob"].description == "a knob added later" and keys["extra.knob"].range == ">= 1"
    assert keys["extra.mode"].type == '"a" | "b"' and keys["extra.mode"].default == "a"
    assert keys["train.warmup_knob"].type == "float" and keys["train.warmup_knob"].default == "0.5"
    assert set(walk(RunConfig)) <= set(leaf_keys())  # and the real config: every walked key is listed


class Documented(Strict):
    """A section's docstring."""

    plain: int = 1  # the trailing comment
    #: a comment block
    #: of two lines
    above: dict[str, float] = {}
    described: int | None = Field(None, gt=0, le=64, description="from Field")
    bare: tuple[float, float] = (0.5, 1.0)


def test_descriptions_come_from_fields_and_source_comments():
    assert source_comments(Documented) == {"plain": "the trailing comment", "above": "a comment block of two lines"}
    keys = {k.key: k for k in config_keys(create_model("Root", __base__=Strict, sec=(Documented, Documented())))}
    assert keys["sec.plain"].description == "the trailing comment"
    assert keys["sec.above"].description == "a comment block of two lines"
    assert keys["sec.described"].description == "from Field" and keys["sec.described"].range == "> 0, <= 64"
    assert keys["sec.described"].type == "int | None" and keys["sec.described"].default == "null"
    assert keys["sec.bare"].default == "[0.5, 1.0]" and keys["sec.bare"].description == ""
    assert type_name(list[str | dict[str, int]]) == "list[str | dict[str, int]]"


def test_notes_name_existing_keys_and_every_key_is_described():
    keys = {k.key: k for k in config_keys()}
    assert set(NOTES) <= set(keys), set(NOTES) - set(keys)  # a renamed key must not leave a stale note behind
    undocumented = [k for k, v in keys.items() if not v.description]
    assert not undocumented, f"describe these keys in config.py (a comment or Field(description=...)): {undocumented}"


def test_cli_keys_text_markdown_and_json(capsys):
    keys = leaf_keys()
    rc, text, _ = run(["config", "--keys"], capsys)
    assert rc == 0 and set(keys) <= {ln.split()[0] for ln in text.splitlines() if not ln.startswith(" ")}
    rc, md, _ = run(["config", "--keys", "--markdown"], capsys)
    rows = md.splitlines()
    assert rc == 0 and rows[0] == "| key | type | default | description |" and len(rows) == len(keys) + 2
    assert [re.match(r"\| `([^`]+)`", r).group(1) for r in rows[2:]] == keys
    assert "| `model.stem` | `\"cifar\" \\| \"imagenet\"` | `cifar` |" in md  # pipes escaped inside the table
    rc, js, _ = run(["config", "keys", "--json"], capsys)
    assert rc == 0 and [k["key"] for k in json.loads(js)] == keys


def test_show_resolves_scale_and_overrides_and_reads_back(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "protocol": {"seeds": [0, 1]},
        "data": {"source": "synthetic"}, "model": {"heads": ["main", "fr"]}, "train": {"epochs": 30},
        "scales": {"tiny": {"train": {"epochs": 2}, "model": {"width": 0.25}, "protocol": {"seeds": [0]}}}}))
    rc, text, err = run(["config", "show", recipe, "--scale", "tiny", "optim.lr=0.01", "model.heads=[main]"], capsys)
    assert rc == 0, err
    tree = yaml.safe_load(text)
    expect = config_dict(load_config(recipe, ["optim.lr=0.01", "model.heads=[main]"], "tiny"))
    assert {k: v for k, v in tree.items() if k != "protocol"} == expect
    assert tree["train"]["epochs"] == 2 and tree["model"]["width"] == 0.25 and tree["optim"]["lr"] == 0.01
    assert tree["protocol"] == {"seeds": [0]}  # the recipe's protocol section, with the scale applied
    assert "heads: [main]" in text  # lists of plain values inline, as one writes them
    shown = tmp_path / "shown.yaml"
    shown.write_text(text)
    assert load_config(shown) == load_config(recipe, ["optim.lr=0.01", "model.heads=[main]"], "tiny")

    rc, text, _ = run(["config", "show", "train.epochs=3", "--json"], capsys)  # no recipe: defaults + overrides
    assert rc == 0 and json.loads(text) == config_dict(load_config(None, ["train.epochs=3"]))


@pytest.mark.parametrize("argv, words", [
    pytest.param(["config", "show", "RECIPE", "train.epoch=3"], ("train.epoch", "valid keys"), id="bad-key"),
    pytest.param(["config", "show", "RECIPE", "--scale", "huge"], ("huge", "tiny"), id="unknown-scale"),
    pytest.param(["config", "show", "missing.yaml"], ("missing.yaml",), id="missing-recipe"),
    pytest.param(["config"], ("--keys", "show"), id="nothing-asked"),
    pytest.param(["config", "--keys", "RECIPE"], ("invalid choice",), id="keys-with-recipe"),
    pytest.param(["config", "keys", "--scale", "tiny"], ("config show",), id="keys-with-scale"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, words):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train: {epochs: 2}\nscales: {tiny: {train: {epochs: 1}}}\n")
    rc, out, err = run([recipe if a == "RECIPE" else a for a in argv], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(w in lines[0] for w in words), lines[0]


def test_the_readme_key_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    found = re.search(f"^{re.escape(KEYS_START)}$(.*?)^{re.escape(KEYS_END)}$", readme, re.M | re.S)
    if found is None:
        pytest.skip("the README has no generated key table yet (merge /work/notes/readme_issue10_api.md)")
    assert found.group(1).strip() == keys_markdown(config_keys()), \
        "README's config key table is stale; regenerate it: r18lab config --keys --markdown"
