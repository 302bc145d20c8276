"""Gramian-attention heads (paper 004; spec 004): exact parameter counts of §D through `models info`, the Gram
step (§A.3), the learned-token ablation, the multi-head GAP-FC baseline and the one-line bad inputs."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import r18lab
from r18lab.analysis.cost import count_params, head_params
from r18lab.cli import main
from r18lab.errors import ConfigError
from r18lab.models import gramian
from r18lab.models.gramian import (branch_param_count, channel_shuffle, combine_logits, fuser_param_count,
                                   gram_vector, matched_hidden, upper_triangle_index)
from r18lab.registry import HEADS


def models_info(capsys, *overrides: str) -> dict:
    assert main(["models", "info", "resnet18", "num_classes=10", *overrides, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def one_line_error(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# -- §D: exact parameter counts --------------------------------------------------------------------------
@pytest.mark.parametrize("width,dim,block,fuser,per_head", [
    (0.25, 32, "convnext", 53_032, 75_050), (0.25, 32, "none", 53_032, 65_002),
    (0.25, 64, "convnext", 53_032, 130_506), (0.25, 64, "none", 53_032, 94_026),
    (1, 64, "convnext", 838_816, 1_001_802), (1, 64, "none", 838_816, 965_322),
    (1, 192, "convnext", 838_816, 2_389_962), (1, 192, "none", 838_816, 2_083_914)])
def test_spec_d_parameter_counts_through_models_info(capsys, width, dim, block, fuser, per_head):
    base = [f"width={width}", "heads=[ga]", f"ga_dim={dim}", f"ga_block={block}"]
    five = models_info(capsys, *base, "ga_count=5")["head_params"]["ga"]
    one = models_info(capsys, *base, "ga_count=1")["head_params"]["ga"]
    assert five == fuser + 5 * per_head and one == fuser + per_head  # count scales the branches, not the fuser
    d = int(512 * width)
    assert fuser_param_count(15 * d // 8, d) == fuser and branch_param_count(d, 10, gram_dim=dim, block=block) == per_head


def test_issue_contract_command_reports_fuser_plus_five_heads(capsys):
    info = models_info(capsys, "width=0.25", "heads=[ga]", "ga_count=5", "ga_dim=32")
    assert info["head_params"] == {"ga": 53_032 + 5 * 75_050}
    m = r18lab.create_model("resnet18", num_classes=10, width=0.25, heads=["ga"], ga_count=5, ga_dim=32)
    head = m.heads["ga"]
    assert count_params(head.fuser) == 53_032
    assert [count_params(b) for b in head.branches] == [75_050] * 5
    assert info["params"] == count_params(m)


def test_options_change_the_counts_as_the_formulas_say():
    def ga(**kw):
        return head_params(r18lab.create_model("resnet18", num_classes=10, width=0.25, heads=["ga"], **kw))["ga"]
    base = ga(ga_count=2, ga_dim=32)
    assert ga(ga_count=2, ga_dim=32, ga_block="basic") - base == 2 * ((18 * 32 ** 2 + 4 * 32) - (8 * 32 ** 2 + 58 * 32))
    assert ga(ga_count=2, ga_dim=32, ga_groups=4) - base == 2 * (528 * 128 // 4 - 528 * 128 // 8)
    assert ga(ga_count=2, ga_dim=32, ga_attn_dim=64) - base == 2 * (4 * 128 * (64 - 32))  # q, k, v, proj
    with_heads = r18lab.create_model("resnet18", num_classes=7, width=0.25, heads=["ga"], ga_count=2, ga_dim=32)
    assert head_params(with_heads)["ga"] - base == 2 * (129 * 7 - 129 * 10)  # fc D·K + K per branch


def test_imagenet_stem_defaults_to_the_released_gram_dim():
    m = r18lab.create_model("resnet18", num_classes=10, stem="imagenet", heads=["ga"], ga_count=1)
    assert m.heads["ga"].gram_dim == 192
    assert r18lab.create_model("resnet18", num_classes=10, width=0.25, heads=["ga"], ga_count=1).heads["ga"].gram_dim == 128


# -- forward: shapes, sub-heads, combination ---------------------------------------------------------------
def small(heads=("ga",), **kw):
    torch.manual_seed(0)
    return r18lab.create_model("resnet18", num_classes=5, width=0.125, heads=list(heads), **kw)


def test_sub_head_logits_are_visible_and_the_head_sums_them():
    m = small(ga_count=3, ga_dim=15)
    assert m.logit_names == ["ga", "ga.0", "ga.1", "ga.2"]
    out = m(torch.randn(4, 3, 32, 32))
    assert {k: tuple(v.shape) for k, v in out.logits.items()} == {k: (4, 5) for k in m.logit_names}
    subs = [out.logits[f"ga.{i}"] for i in range(3)]
    assert torch.allclose(out.logits["ga"], sum(subs), atol=1e-6)
    assert not torch.allclose(subs[0], subs[1])  # independently initialised branches
    mean = small(ga_count=3, ga_dim=15, ga_combine="mean")
    mean.load_state_dict(m.state_dict())
    out_mean = mean(torch.randn(4, 3, 32, 32))
    assert torch.allclose(out_mean.logits["ga"], sum(out_mean.logits[f"ga.{i}"] for i in range(3)) / 3, atol=1e-6)
    assert torch.equal(combine_logits([torch.ones(2), 3 * torch.ones(2)], "mean"), 2 * torch.ones(2))


def test_gradients_reach_the_backbone_through_every_branch():
    m = small(ga_count=2, ga_dim=15)
    out = m(torch.randn(4, 3, 16, 16))
    out.logits["ga.1"].sum().backward()
    assert m.layer1[0].conv1.weight.grad.abs().sum() > 0
    branch0 = [p.grad for p in m.heads["ga"].branches[0].parameters()]
    assert all(g is None or g.abs().sum() == 0 for g in branch0)  # ga.1 alone does not train branch 0


def test_fuser_resamples_stage_four_exactly_as_the_reference_x2_upsample():
    x4 = torch.randn(2, 3, 4, 4)
    ours = F.interpolate(x4, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.equal(ours, torch.nn.Upsample(scale_factor=2, mode="bilinear")(x4))


def test_other_image_sizes_are_resampled_to_stage_three():
    out = small(ga_count=1, ga_dim=15)(torch.randn(2, 3, 28, 28))  # stage 3 is 7×7, stage 4 is 4×4
    assert out.logits["ga"].shape == (2, 5)


# -- §A.3: the Gram step -------------------------------------------------------------------------------------
def test_gram_upper_triangle_is_row_major_and_l2_normalised():
    # c = 3 channels over H×W = 1×2 positions: f0 = (1, 0), f1 = (0, 2), f2 = (1, 1)
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]).reshape(1, 3, 1, 2)
    # G ∝ [[1, 0, 1], [0, 4, 2], [1, 2, 2]]; row-major i ≤ j: (G00, G01, G02, G11, G12, G22)
    expected = torch.tensor([1.0, 0.0, 1.0, 4.0, 2.0, 2.0]) / math.sqrt(26.0)
    assert torch.allclose(gram_vector(x)[0], expected, atol=1e-7)
    assert upper_triangle_index(3).tolist() == [0, 1, 2, 4, 5, 8]
    assert torch.allclose(gram_vector(7.5 * x), gram_vector(x), atol=1e-7)  # scale-invariant after normalising


def test_gram_in_float64_matches_a_float64_reference():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 4, 4, dtype=torch.float64)
    u = (x / 4).reshape(3, 6, 16)
    g = u @ u.transpose(1, 2) / 16
    rows, cols = torch.triu_indices(6, 6)
    ref = g[:, rows, cols] / g[:, rows, cols].norm(dim=1, keepdim=True)
    got = gram_vector(x)
    assert got.dtype == torch.float64 and torch.allclose(got, ref, atol=1e-14)
    as32 = gram_vector(x.float(), dtype=torch.float64)
    assert as32.dtype == torch.float32 and torch.allclose(as32.double(), ref, atol=1e-6)


@pytest.mark.parametrize("mode,training,batch,expected", [
    ("auto", True, 4, torch.float64), ("auto", True, 128, None), ("auto", False, 4, None),
    ("float32", True, 4, torch.float32), ("float64", False, 256, torch.float64)])
def test_gram_dtype_follows_the_reference_rule(monkeypatch, mode, training, batch, expected):
    m = small(ga_count=1, ga_dim=15, ga_gram_dtype=mode).train(training)
    seen = []
    real = gramian.gram_vector
    monkeypatch.setattr(gramian, "gram_vector", lambda x, index=None, dtype=None: seen.append(dtype) or real(x, index, dtype))
    with torch.no_grad():
        m(torch.randn(batch, 3, 8, 8))
    assert seen == [expected]


def test_channel_shuffle_matches_the_reference_layout():
    x = torch.arange(8.0).reshape(1, 8, 1, 1)
    # channels as (C/g, g) = (2, 4), transposed: the inverse of ShuffleNet's (g, C/g) order [0, 2, 4, 6, 1, 3, 5, 7]
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


# -- ca_token: the same heads with a learned query -----------------------------------------------------------
def test_ca_token_differs_from_ga_only_in_the_query():
    ga = small(ga_count=2, ga_dim=15).eval()
    ca = small(["ca_token"], ca_token_count=2).eval()  # a head name with "_" configured by a flat option
    ga_head, ca_head = ga.heads["ga"], ca.heads["ca_token"]
    ga_keys, ca_keys = set(ga_head.state_dict()), set(ca_head.state_dict())
    assert ca_keys - ga_keys == {"branches.0.query.token", "branches.1.query.token"}
    assert {k for k in ga_keys - ca_keys} == {k for k in ga_keys if ".query." in k}  # contraction, block, embedding
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        for branch in ga_head.branches:  # full-strength attention, so that the tokens' attention is compared too
            branch.attn.gamma_1.fill_(1.0), branch.attn.gamma_2.fill_(1.0)
        shared = {k: v for k, v in ga.state_dict().items() if ".query." not in k}
        ca.load_state_dict({**ca.state_dict(), **{k.replace("heads.ga.", "heads.ca_token."): v
                                                  for k, v in shared.items()}})
        differs = ca(x).logits
        fused = ga_head.fuser(ga._backbone.forward_features(x, stages=True)[1])
        for i, branch in enumerate(ga_head.branches):  # give each learned token this image's Gram token
            ca_head.branches[i].query.token.copy_(branch.query(fused))
        same, ref = ca(x).logits, ga(x).logits
    for k in ("0", "1"):
        assert torch.allclose(same[f"ca_token.{k}"], ref[f"ga.{k}"], atol=1e-5)
        assert not torch.allclose(differs[f"ca_token.{k}"], ref[f"ga.{k}"], atol=1e-5)


def test_ca_token_parameters_follow_the_formula(capsys):
    info = models_info(capsys, "width=0.25", "heads=[ca_token]", "ca_token_count=5")
    assert info["head_params"]["ca_token"] == 53_032 + 5 * branch_param_count(128, 10, gram_dim=None)
    assert branch_param_count(128, 10, gram_dim=None) == 75_050 - (4_192 + 10_048 + 8_832) + 128


# -- multi_fc: the parameter-matched GAP-FC baseline ---------------------------------------------------------
def test_multi_fc_matches_a_parameter_budget():
    target = 53_032 + 5 * 75_050
    m = r18lab.create_model("resnet18", num_classes=10, width=0.25, heads=["multi_fc"], multi_fc_count=5,
                            multi_fc_match_params=target)
    got = head_params(m)["multi_fc"]
    assert m.heads["multi_fc"].hidden == matched_hidden(target, 128, 10, 5) == 607
    assert abs(got - target) <= 5 * (128 + 10 + 3) / 2
    plain = r18lab.create_model("resnet18", num_classes=10, width=0.25, heads=["multi_fc"], multi_fc_count=3)
    assert head_params(plain)["multi_fc"] == 3 * (128 * 10 + 10)
    assert plain.logit_names == ["multi_fc", "multi_fc.0", "multi_fc.1", "multi_fc.2"]


# -- bad inputs: one line, exit 2 ----------------------------------------------------------------------------
def test_gram_dim_not_divisible_by_the_projection_groups(capsys):
    line = one_line_error(capsys, ["models", "info", "resnet18", "width=0.25", "heads=[ga]", "ga_dim=10", "--json"])
    assert "ga_dim=10" in line and "55" in line and "groups" in line
    with pytest.raises(ConfigError):
        HEADS.get("ga")(128, 10, dim=33)  # 561 entries
    assert HEADS.get("ga")(128, 10, dim=33, groups=1, count=1).groups == 1  # ungrouped: any dim


def test_stage_maps_narrower_than_the_fuser_expects(capsys):
    line = one_line_error(capsys, ["models", "info", "resnet18", "width=0.25", "heads=[ga]", "ga_dim=32",
                                   "ga_stage_channels=[32, 64, 128, 256]", "--json"])
    assert "[32, 64, 128, 256]" in line and "ga_stage_channels=[16, 32, 64, 128]" in line


def test_fewer_stage_maps_than_the_fuser_expects(capsys):
    line = one_line_error(capsys, ["models", "info", "wrn16_1", "heads=[ga]", "ga_dim=32", "--json"])
    assert "4 stage maps" in line and "gives 3" in line


def test_stage_maps_smaller_than_stage_three(capsys):
    head = HEADS.get("ga")(64, 10, dim=16, count=1)
    maps = [torch.randn(2, c, s, s) for c, s in ((8, 2), (16, 4), (32, 4), (64, 2))]
    with pytest.raises(ConfigError, match="smaller than stage 3"):
        head(None, maps)


@pytest.mark.parametrize("option", ["ga_block=dense", "ga_count=0", "ga_combine=max", "ga_attn_dim=30",
                                    "ga_gram_dtype=half", "ga_stage_channels=[1, 2]"])
def test_bad_options_are_one_line(capsys, option):
    line = one_line_error(capsys, ["models", "info", "resnet18", "width=0.25", "heads=[ga]", "ga_dim=32", option])
    assert option.split("=")[0] in line


def test_layer_scale_sets_the_class_attention_gamma_and_is_validated():
    from r18lab.errors import ConfigError
    from r18lab.models.classifier import create_model

    m = create_model("resnet18", num_classes=4, width=0.125, heads=["ca_token"], ca_token_count=2,
                     ca_token_layer_scale=0.5)
    block = m.heads["ca_token"].branches[1].attn
    assert torch.equal(block.gamma_1, torch.full_like(block.gamma_1, 0.5))
    default = create_model("resnet18", num_classes=4, width=0.125, heads=["ga"], ga_count=1, ga_dim=16)
    assert float(default.heads["ga"].branches[0].attn.gamma_2.detach()[0]) == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="ca_token_layer_scale"):
        create_model("resnet18", num_classes=4, width=0.125, heads=["ca_token"], ca_token_layer_scale=-1)
