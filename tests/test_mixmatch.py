"""MixMatch (objective `mixmatch`), the unlabelled stream and the weight-EMA hook (issue 12)."""
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from r18lab.config import load_config
from r18lab.data.unlabelled import UnlabelledStream, unlabelled_rows
from r18lab.objectives.mixmatch import (MixMatch, guess_labels, labelled_loss, linear_rampup, mix_weight, mixup,
                                        sharpen, unlabelled_loss)
from r18lab.train.engine import train
from r18lab.train.hooks.ema import ema_update

from helpers import interrupt_at, tiny, tiny_recipe
from test_cli import run_cli

SEMI = ("data.labels=32", "data.unlabelled=rest", "train.batch_size=16")


# -- the maths, on hand-computed cases ----------------------------------------------------------------------------
def test_sharpen_and_label_guess_by_hand():
    # [0.6, 0.4] at T = 0.5: [0.36, 0.16] / 0.52
    assert torch.allclose(sharpen(torch.tensor([[0.6, 0.4]]), 0.5), torch.tensor([[0.36 / 0.52, 0.16 / 0.52]]))
    assert torch.allclose(sharpen(torch.tensor([[0.6, 0.4]]), 1.0), torch.tensor([[0.6, 0.4]]))
    # two views: softmax [0.5, 0.5] and softmax(log [0.9, 0.1]) = [0.9, 0.1]; mean [0.7, 0.3]; T = 0.5: [0.49, 0.09]/0.58
    z1, z2 = torch.zeros(1, 2), torch.log(torch.tensor([[0.9, 0.1]]))
    assert torch.allclose(guess_labels([z1, z2], 0.5), torch.tensor([[0.49 / 0.58, 0.09 / 0.58]]), atol=1e-6)


def test_mixup_weight_and_ramp_by_hand():
    assert mix_weight(0.3) == 0.7 and mix_weight(0.8) == 0.8
    x, t = torch.tensor([[0.0], [10.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mx, mt = mixup(x, t, 0.75, torch.tensor([1, 0]))
    assert torch.allclose(mx, torch.tensor([[2.5], [7.5]])) and torch.allclose(mt, torch.tensor([[0.75, 0.25], [0.25, 0.75]]))
    assert linear_rampup(5, 10) == 0.5 and linear_rampup(20, 10) == 1.0 and linear_rampup(-1, 10) == 0.0
    assert linear_rampup(3, 0) == 1.0


def test_losses_by_hand():
    z = torch.zeros(1, 2)  # softmax [0.5, 0.5]
    assert math.isclose(float(labelled_loss(z, torch.tensor([[0.75, 0.25]]))), math.log(2), rel_tol=1e-6)
    # (0.5 − 1)² + (0.5 − 0)² over 2 classes = 0.25: the mean over classes, as MixMatch eq. 4's 1/L
    assert math.isclose(float(unlabelled_loss(z, torch.tensor([[1.0, 0.0]]))), 0.25, rel_tol=1e-6)


def test_mix_draws_follow_alpha_and_the_step():
    from r18lab.objectives.base import ObjectiveContext
    ctx = ObjectiveContext(["main"], 4, torch.device("cpu"), extras={"seed": 3, "epochs": 10})

    def lams(alpha):
        obj = MixMatch(ctx, alpha=alpha)
        return np.array([obj.draw(s, 8)[0] for s in range(200)])

    peaked, flat = lams(0.05), lams(50.0)  # Beta(α, α): mass at the ends for small α, at 1/2 for large α
    assert peaked.min() >= 0.5 and np.median(peaked) > 0.95 and abs(np.median(flat) - 0.5) < 0.1
    obj = MixMatch(ctx)
    assert obj.draw(5, 8)[0] == obj.draw(5, 8)[0] and sorted(obj.draw(5, 8)[1]) == list(range(8))
    assert obj.draw(5, 8)[0] != obj.draw(6, 8)[0]


def test_ema_update_by_hand():
    shadow, counter = [torch.zeros(2), torch.zeros((), dtype=torch.long)], [torch.ones(2), torch.tensor(7)]
    ema_update(shadow, counter, 0.9)
    assert torch.allclose(shadow[0], torch.full((2,), 0.1)) and int(shadow[1]) == 7
    ema_update(shadow, counter, 0.9)
    assert torch.allclose(shadow[0], torch.full((2,), 0.19))


# -- the unlabelled stream -----------------------------------------------------------------------------------------
def test_unlabelled_rows_are_the_complement_of_the_pool():
    assert unlabelled_rows(6, np.array([4, 1])).tolist() == [0, 2, 3, 5]


def test_stream_batch_is_a_function_of_the_step():
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    a, b = UnlabelledStream(images, 4, 2, 0, None), UnlabelledStream(images, 4, 2, 0, None)
    seq = [a.at(s) for s in range(7)]  # 2 batches per pass (drop_last): steps 2.. wrap around into new passes
    assert all(len(v) == 2 and v[0].shape == (4, 3, 4, 4) for v in seq)
    for s in (5, 2, 6):  # a fresh stream asked for step s directly (a resume) draws what the running one drew
        assert all(torch.equal(p, q) for p, q in zip(b.at(s), seq[s]))
    assert not torch.equal(seq[0][0], seq[2][0])  # the next pass is in another order


# -- the objective in the engine ----------------------------------------------------------------------------------
def test_forward_batch_holds_labelled_and_k_views_and_every_head_gets_both_terms(tmp_path, monkeypatch):
    seen = []
    original = MixMatch.compose

    def spy(self, batch, views, forward, step):
        out = original(self, batch, views, forward, step)
        seen.append((len(batch.x), len(views), len(out.x), out.labelled, out.soft.shape))
        return out

    monkeypatch.setattr(MixMatch, "compose", spy)
    train(load_config(None, tiny(*SEMI, "train.epochs=1", "model.heads=[main, fr]",
                                 "objective=[{name: mixmatch, views: 3}]")), tmp_path / "run")
    assert seen and all(v == 3 and n == b * 4 and lab == b and soft == (b * 4, 4) for b, v, n, lab, soft in seen)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train/mixmatch/x/main", "train/mixmatch/u/main", "train/mixmatch/x/fr", "train/mixmatch/u/fr"} <= set(record)


def test_lambda_u_ramps_and_scales_the_unlabelled_term(tmp_path):
    def run(lambda_u, rampup):
        cfg = load_config(None, tiny(*SEMI, "train.batch_size=32", "train.epochs=2", "optim.lr=1e-9",
                                     f"objective=[{{name: mixmatch, lambda_u: {lambda_u}, rampup_epochs: {rampup}}}]"))
        train(cfg, tmp_path / f"r{lambda_u}-{rampup}")
        rows = [json.loads(r) for r in (tmp_path / f"r{lambda_u}-{rampup}" / "metrics.jsonl").read_text().splitlines()]
        return [r["train/mixmatch/u/main"] for r in rows]

    full, ramped, off = run(75, 0), run(75, 100), run(0, 0)
    assert off == [0.0, 0.0] and full[0] > 0 and full[1] > 0
    # one step per epoch (32 labels, batch 32), at t = 0 and t = 1 epochs; lr ≈ 0 keeps the network as it was, so
    # the ramped term is the full one × t/100
    assert ramped[0] == 0.0
    assert ramped[1] == pytest.approx(full[1] * 0.01, rel=1e-3)


def test_resume_after_kill_gives_identical_weights_with_mixmatch_and_ema(tmp_path, monkeypatch):
    args = tiny(*SEMI, "train.epochs=3", "train.deterministic=true", "objective=[mixmatch]", "hooks=[ema]")
    train(load_config(None, args), tmp_path / "full")
    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        interrupt_at(m, 3)
        train(load_config(None, args), tmp_path / "cut")
    train(load_config(None, args), tmp_path / "cut", resume=True)
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ema_weights_are_evaluated_and_saved_not_the_trained_ones(tmp_path):
    common = ("train.epochs=2", "optim.lr=0.2")
    train(load_config(None, tiny(*common, "hooks=[{name: ema, decay: 0.9}]")), tmp_path / "ema")
    train(load_config(None, tiny(*common)), tmp_path / "plain")
    train(load_config(None, tiny(*common, "hooks=[{name: ema, decay: 0.0}]")), tmp_path / "ema0")
    saved = load_file(tmp_path / "ema" / "model.safetensors")
    online = load_file(tmp_path / "ema" / "checkpoint" / "epoch0002.model.safetensors")
    plain = load_file(tmp_path / "plain" / "model.safetensors")
    ema0 = load_file(tmp_path / "ema0" / "model.safetensors")
    key = "conv1.weight"
    assert torch.equal(online[key], plain[key])  # the EMA does not change training
    assert not torch.equal(saved[key], online[key])  # model.safetensors holds the average
    assert all(torch.equal(ema0[k], plain[k]) for k in plain if ema0[k].is_floating_point())  # decay 0: the weights
    summary = json.loads((tmp_path / "ema" / "summary.json").read_text())
    assert summary["weights"] == "ema(decay=0.9)"
    plain_summary = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert plain_summary["weights"] == "trained" and summary["final"] != plain_summary["final"]
    assert summary["final_trained"] == pytest.approx(plain_summary["final"]) and "final_trained" not in plain_summary


def test_mixmatch_cli_end_to_end_and_eval_reads_the_ema_weights(tmp_path):
    out = tmp_path / "mm"
    r = run_cli("train", *tiny(*SEMI, "model.heads=[main, fr]", "objective=[mixmatch]", "hooks=[ema]"),
                "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    r = run_cli("eval", str(out / "model.safetensors"), "synthetic", "num_classes=4", "image_size=8", "n=128", "--json",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["eval/main/acc"] == pytest.approx(summary["final"]["eval/main/acc"])


@pytest.mark.parametrize("extra, message", [
    (("data.labels=32", "objective=[mixmatch]"), "needs unlabelled data but the run has none; set data.unlabelled=rest"),
    (("data.unlabelled=rest", "objective=[mixmatch]"), "the unlabelled pool holds 0 image(s)"),
    (("data.labels=32", "data.unlabelled=rest", "objective=[ce, mixmatch]"), "so ce (which reads the labels) cannot"),
    (("data.labels=32", "data.unlabelled=rest", "objective=[{name: mixmatch, views: 0}]"), "views (K"),
    (("data.labels=32", "data.unlabelled=rest", "objective=[{name: mixmatch, guess_head: fr}]"), "guess_head 'fr'"),
    (("hooks=[{name: ema, decay: 1.0}]",), "hook ema: decay must lie in [0, 1)"),
])
def test_bad_settings_are_one_line_exit_2(tmp_path, extra, message):
    r = run_cli("train", *tiny(*extra), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_lowdata_protocol_runs_mixmatch_methods_beside_the_baseline(tmp_path, capsys):
    from r18lab.cli import main
    recipe = tiny_recipe(1).replace("methods: [resnet18, fr-resnet18]", "methods: [resnet18, mixmatch, fr-mixmatch]")
    (tmp_path / "p.yaml").write_text(recipe)
    out = tmp_path / "proto"
    assert main(["protocol", "lowdata", str(tmp_path / "p.yaml"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mixmatch" in printed and "fr-mixmatch" in printed
    summaries = {json.loads(p.read_text())["weights"] for p in out.rglob("summary.json")}
    assert summaries == {"trained", "ema(decay=0.999)"}
    configs = [json.loads(p.read_text()) for p in out.rglob("config.json")]
    semi = [c for c in configs if c["objective"] == ["mixmatch"]]
    assert len(semi) == 2 and all(c["data"]["unlabelled"] == "rest" and c["optim"]["name"] == "adamw" for c in semi)
    assert {tuple(c["model"]["heads"]) for c in semi} == {("main",), ("main", "fr")}
