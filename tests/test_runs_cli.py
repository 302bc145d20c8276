"""`r18lab runs list` / `runs show`: short ids, dataset, model, heads, status, main accuracy; show by id, short-id
prefix or run folder (also one the store does not know); stable JSON keys; one-line errors, exit 2."""
import json
import os

import pytest

import r18lab
from r18lab.cli import main
from r18lab.results.store import RunStore, short_id
from r18lab.runs import RECORD_KEYS, SHOW_KEYS

from helpers import tiny


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line_error(result, *words):
    rc, _, err = result
    assert rc == 2, (rc, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and ";" in lines[0], err
    assert all(w in lines[0] for w in words), lines[0]


@pytest.fixture
def trained(tmp_path, capsys):
    """A finished tiny run with two heads, trained through the CLI (so recorded in the store)."""
    out = tmp_path / "fr"
    assert main(["train", *tiny("model.heads=[main, fr]", "model.options={fr_dim: 16}"), "--out", str(out)]) == 0
    capsys.readouterr()
    return out, json.loads((out / "summary.json").read_text())


def test_list_shows_id_dataset_model_heads_status_accuracy(trained, capsys):
    out, summary = trained
    rc, text, _ = run(["runs", "list"], capsys)
    header, line = text.splitlines()
    assert header.split() == ["status", "id", "dataset", "model", "heads", "acc", "%", "run"]
    run_id = str(out.resolve())
    acc = summary["final"]["eval/main/acc"]
    assert line.split() == ["done", short_id(run_id), "synthetic", "resnet18", "×0.0625", "main,fr", f"{acc:.2f}",
                            run_id]

    rc, text, _ = run(["runs", "list", "--json"], capsys)
    (rec,) = json.loads(text)
    assert tuple(rec) == RECORD_KEYS  # stable keys, in a stable order
    assert rec["id"] == short_id(run_id) and rec["run_id"] == run_id and rec["status"] == "done"
    assert rec["dataset"] == "synthetic" and rec["model"] == "resnet18" and rec["heads"] == ["main", "fr"]
    assert rec["accuracy"] == acc and rec["accuracies"]["fr"] == summary["final"]["eval/fr/acc"]
    assert rec["identity"] == summary["identity"] and rec["source"] == "store"

    assert json.loads(run(["runs", "list", "--json", "--status", "running"], capsys)[1]) == []
    assert len(json.loads(run(["runs", "list", "--json", "--limit", "1"], capsys)[1])) == 1


def test_show_by_id_short_prefix_folder_or_weights_file(trained, capsys, monkeypatch):
    out, summary = trained
    run_id = str(out.resolve())
    monkeypatch.chdir(out.parent)
    shown = []
    for query in (run_id, short_id(run_id), short_id(run_id)[:3], str(out), out.name, out / "model.safetensors"):
        rc, text, err = run(["runs", "show", query, "--json"], capsys)
        assert rc == 0, err
        shown.append(json.loads(text))
    assert all(r["run_id"] == run_id and r["source"] == "store" for r in shown)
    rec = shown[0]
    assert tuple(rec) == RECORD_KEYS + SHOW_KEYS
    assert rec["summary"] == summary and rec["config"]["model"]["heads"] == ["main", "fr"]
    rc, text, _ = run(["runs", "show", out.name], capsys)
    assert rc == 0 and f"id: {short_id(run_id)}" in text and f"main {summary['final']['eval/main/acc']:.2f}%" in text


def test_show_reads_a_run_folder_the_store_does_not_know(tmp_path, capsys):
    out = tmp_path / "api-run"
    summary = r18lab.train(dict(_tree()), out, store=False)  # trained without recording it
    rc, text, err = run(["runs", "show", out, "--json"], capsys)
    assert rc == 0, err
    rec = json.loads(text)
    assert rec["source"] == "folder" and rec["status"] == "done" and rec["run_id"] == str(out.resolve())
    assert rec["accuracy"] == summary["final"]["eval/main/acc"] and rec["dataset"] == "synthetic"
    assert rec["summary"]["identity"] == summary["identity"]
    rc, text, _ = run(["runs", "show", out], capsys)
    assert rc == 0 and "recorded in: the run folder only" in text

    started = tmp_path / "started"  # killed before a result: config.json only; then with a metrics line
    started.mkdir()
    (started / "config.json").write_text((out / "config.json").read_text())
    assert json.loads(run(["runs", "show", started, "--json"], capsys)[1])["status"] == "not started"
    (started / "metrics.jsonl").write_text('{"epoch": 1}\n')
    rec = json.loads(run(["runs", "show", started, "--json"], capsys)[1])
    assert rec["status"] == "interrupted" and rec["accuracy"] is None


def _tree():
    from r18lab.config import parse_overrides
    return parse_overrides(tiny("train.epochs=1"))


def test_unknown_ambiguous_or_empty_is_one_line_exit_2(tmp_path, capsys):
    store = RunStore(os.environ["R18LAB_STORE"])
    ids = [f"fake/{i}" for i in range(40)]
    for i in ids:
        store.start(i, config={}, out_dir=tmp_path / "nowhere")
    one_line_error(run(["runs", "show", "nope"], capsys), "nope", "runs list")
    first = [short_id(i)[0] for i in ids]
    shared = next(c for c in first if first.count(c) > 1)  # 40 ids over 16 first digits: some share one
    one_line_error(run(["runs", "show", shared], capsys), "matches", "more characters")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(run(["runs", "show", empty], capsys), "config.json", "run folder")
    one_line_error(run(["runs", "show"], capsys), "run id")
    one_line_error(run(["runs", "list", "fake/1"], capsys), "runs show")
    rc, text, _ = run(["runs", "list"], capsys)  # rows without config or metrics still list
    assert rc == 0 and len(text.splitlines()) == 41 and all(ln.split()[0] in ("running", "interrupted", "status")
                                                            for ln in text.splitlines())
    rec = json.loads(run(["runs", "show", "fake/3", "--json"], capsys)[1])
    assert rec["accuracy"] is None and rec["heads"] == ["main"] and rec["summary"] is None
