"""Paper 003's networks: every one of the 108 models of Tables 8/9 counted exactly through `r18lab models info`,
the grouped / residual-free transforms, pre-activation WRN and MobileNet-V2 (spec 003 §1, §3.1, §3.3)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import r18lab
from r18lab.analysis.cost import count_flops, count_params
from r18lab.cli import main
from r18lab.errors import ConfigError
from r18lab.models.transforms import GroupedConv
from r18lab.reference.p003_costs import (FAMILIES, PRINTED_FLOPS, PRINTED_PARAMS, VARIANTS, matches_printed,
                                         table, variant_transforms)


def _rows(text: str) -> dict[tuple[str, str, str], int]:
    return table(text, int)


# spec 003 §3.1: our reconstruction, every integer rounds to the paper's printed value
EXACT_PARAMS = _rows("""
wrn22_2 R 655_572 401_556 274_548 211_044 158_628 169_716 191_892 236_244 324_948
wrn22_2 NR 644_820 390_804 263_796 200_292 147_876 158_964 181_140 225_492 314_196
wrn22_10 R 15_968_468 9_631_892 6_463_604 4_879_460 3_350_180 3_405_044 3_514_772 3_734_228 4_173_140
wrn22_10 NR 15_709_908 9_373_332 6_205_044 4_620_900 3_091_620 3_146_484 3_256_212 3_475_668 3_914_580
wrn28_2 R 893_908 543_124 367_732 280_036 207_460 222_580 252_820 313_300 434_260
wrn28_2 NR 883_156 532_372 356_980 269_284 196_708 211_828 242_068 302_548 423_508
wrn40_2 R 1_370_580 826_260 554_100 418_020 305_124 328_308 374_676 467_412 652_884
wrn40_2 NR 1_359_828 815_508 543_348 407_268 294_372 317_556 363_924 456_660 642_132
resnet18 R 6_567_716 4_014_884 2_738_468 2_100_260 1_492_580 1_523_108 1_584_164 1_706_276 1_950_500
resnet18 NR 6_393_892 3_841_060 2_564_644 1_926_436 1_318_756 1_349_284 1_410_340 1_532_452 1_776_676
mobilenet_v2 R 22_610_308 12_457_732 7_381_444 4_843_300 2_369_380 2_433_604 2_562_052 2_818_948 3_332_740
mobilenet_v2 NR 22_610_308 12_457_732 7_381_444 4_843_300 2_369_380 2_433_604 2_562_052 2_818_948 3_332_740
""")

EXACT_FLOPS = _rows("""
wrn22_2 R 93_647_360 56_488_448 37_908_992 28_619_264 22_168_064 25_006_592 30_683_648 42_037_760 64_745_984
wrn22_2 NR 92_074_496 54_915_584 36_336_128 27_046_400 20_595_200 23_433_728 29_110_784 40_464_896 63_173_120
wrn22_10 R 2_281_028_096 1_366_211_072 908_802_560 680_098_304 464_996_864 478_599_680 505_805_312 560_216_576 669_039_104
wrn22_10 NR 2_252_192_256 1_337_375_232 879_966_720 651_262_464 436_161_024 449_763_840 476_969_472 531_380_736 640_203_264
wrn28_2 R 128_250_368 76_935_680 51_278_336 38_449_664 29_491_712 33_362_432 41_103_872 56_586_752 87_552_512
wrn28_2 NR 126_677_504 75_362_816 49_705_472 36_876_800 27_918_848 31_789_568 39_531_008 55_013_888 85_979_648
wrn40_2 R 197_456_384 117_830_144 78_017_024 58_110_464 44_139_008 50_074_112 61_944_320 85_684_736 133_165_568
wrn40_2 NR 195_883_520 116_257_280 76_444_160 56_537_600 42_566_144 48_501_248 60_371_456 84_111_872 131_592_704
resnet18 R 328_452_096 198_690_816 133_810_176 101_369_856 73_095_168 77_260_800 85_592_064 102_254_592 135_579_648
resnet18 NR 322_160_640 192_399_360 127_518_720 95_078_400 66_803_712 70_969_344 79_300_608 95_963_136 129_288_192
mobilenet_v2 R 634_407_936 348_293_760 205_236_672 133_708_128 64_947_264 67_714_944 73_250_304 84_321_024 106_462_464
mobilenet_v2 NR 634_407_936 348_293_760 205_236_672 133_708_128 64_947_264 67_714_944 73_250_304 84_321_024 106_462_464
""")


def _info(capsys, name: str, *overrides: str) -> dict:
    assert main(["models", "info", name, *overrides, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _transforms_arg(variant: str, residual: bool) -> str:
    return "transforms=" + json.dumps(variant_transforms(variant, residual))


@pytest.mark.parametrize("family", FAMILIES)
def test_models_info_reproduces_tables_8_and_9_exactly(family, capsys):
    """All 9 variants × {R, NR} of one family: exact integers, the paper's printed millions, and R − NR."""
    for variant in VARIANTS:
        got = {}
        for kind in ("R", "NR"):
            key = (family, kind, variant)
            info = _info(capsys, family, "num_classes=100", "stem=cifar", _transforms_arg(variant, kind == "R"))
            assert (info["params"], info["flops"]) == (EXACT_PARAMS[key], EXACT_FLOPS[key]), key
            assert matches_printed(info["params"], PRINTED_PARAMS[key]), key
            assert matches_printed(info["flops"], PRINTED_FLOPS[key]), key
            assert info["paper"] == {**info["paper"], "kind": kind, "variant": variant, "params_match": True,
                                     "flops_match": True, "params_printed": PRINTED_PARAMS[key]}
            got[kind] = info
        delta = {"resnet18": (173_824, 6_291_456), "wrn22_10": (258_560, 28_835_840),
                 "mobilenet_v2": (0, 0)}.get(family, (10_752, 1_572_864))  # spec 003 §1.3–1.5
        assert (got["R"]["params"] - got["NR"]["params"], got["R"]["flops"] - got["NR"]["flops"]) == delta


def test_grouped_string_forms_in_the_public_contract(capsys):
    """The issue's exact command line (YAML flow lists with a mapping entry)."""
    info = _info(capsys, "resnet18", "num_classes=100", "stem=cifar",
                 "transforms=[no_residual, {name: grouped, groups: 2}]")
    assert (info["params"], info["flops"]) == (6_393_892, 322_160_640)
    info = _info(capsys, "resnet18", "num_classes=100", "stem=cifar", "transforms=[{name: grouped, group_width: 1}]")
    assert (info["params"], info["flops"]) == (1_492_580, 73_095_168)
    assert _info(capsys, "resnet18", "num_classes=10").get("paper") is None  # not one of the paper's configurations


def test_printed_rounding_rule_and_its_double_rounding_cells():
    """Spec 003 §3.1: half-up to max(printed decimals, 3 significant figures); 3 cells were double-rounded."""
    assert matches_printed(6_567_716, "6.57") and not matches_printed(6_567_716, "6.56")
    assert matches_printed(158_628, "0.159") and matches_printed(1_370_580, "1.37")
    assert matches_printed(15_968_468, "16") and not matches_printed(15_968_468, "15.9")
    assert matches_printed(2_281_028_096, "2281") and not matches_printed(2_281_028_096, "2280")
    assert matches_printed(40_464_896, "40.47") and matches_printed(67_714_944, "67.72")  # 40.465 → 40.47
    assert matches_printed(40_464_896, "40.46")  # the single rounding is accepted too
    assert not matches_printed(40_464_896, "40.45") and not matches_printed(40_454_896, "40.47")


@pytest.mark.parametrize("k", [1, 2, 4, 8, 16])
def test_table_7_formulas_on_one_grouped_conv(k):
    """Table 7 (K = 3, M = N = 64, F = 32): constant g → K²MNF²/g; constant G → K²GNF²; params likewise."""
    from r18lab.models.transforms import group_count
    for groups, params, flops in [(group_count(64, k, None, "x"), 9 * 64 * 64 // k, 9 * 64 * 64 * 32 * 32 // k),
                                  (group_count(64, None, k, "x"), 9 * k * 64, 9 * k * 64 * 32 * 32)]:
        conv = nn.Conv2d(64, 64, 3, padding=1, groups=groups, bias=False)
        assert count_params(conv) == params and count_flops(conv, (64, 32, 32)) == flops


def test_grouped_resnet18_layer_structure_and_groups_per_layer():
    """Spec 003 §1.2/§3.3: grouped 3×3 keeps C_in (stride on it), BN, ReLU, 1×1 to C_out; G4 → C_in/4 groups of
    *that* conv; the stem, projection shortcuts and classifier are not replaced."""
    m = r18lab.create_model("resnet18", num_classes=100, transforms=[{"name": "grouped", "group_width": 4}])
    first = m.layer2[0].conv1
    assert isinstance(first, GroupedConv) and [n for n, _ in first.named_children()] == ["gconv", "bn", "relu", "pw"]
    assert (first.gconv.in_channels, first.gconv.out_channels, first.gconv.stride, first.gconv.groups) == (64, 64, (2, 2), 16)
    assert (first.pw.in_channels, first.pw.out_channels, first.pw.kernel_size) == (64, 128, (1, 1))
    groups = {n: c.groups for n, c in m.named_modules() if n.endswith("gconv")}
    assert groups["layer1.0.conv1.gconv"] == 16 and groups["layer2.0.conv2.gconv"] == 32
    assert groups["layer3.0.conv1.gconv"] == 32 and groups["layer4.1.conv2.gconv"] == 128 and len(groups) == 16
    assert type(m.conv1) is nn.Conv2d and type(m.layer2[0].downsample[0]) is nn.Conv2d and type(m.fc) is nn.Linear
    assert m(torch.randn(2, 3, 32, 32)).logits["main"].shape == (2, 100)


def test_grouped_needs_divisible_channels_and_names_the_layer():
    with pytest.raises(ConfigError, match=r"layer layer1\.0\.conv1 has 8 input channels, not divisible by groups=16"):
        r18lab.create_model("resnet18", num_classes=10, width=0.125, transforms=[{"name": "grouped", "groups": 16}])
    with pytest.raises(ConfigError, match=r"layer stage2\.1\.conv\.3 has 144 input channels, not divisible by "
                                          r"group_width=32"):
        r18lab.create_model("mobilenet_v2", num_classes=10, transforms=[{"name": "grouped", "group_width": 32}])


@pytest.mark.parametrize("transforms,message", [
    ([{"name": "grouped", "groups": 2, "group_width": 2}], "takes exactly one of groups (constant g) or group_width"),
    (["grouped"], "takes exactly one of groups (constant g) or group_width"),
    ([{"name": "grouped", "groups": 0}], "groups must be a positive integer, got 0"),
    ([{"name": "grouped", "group_width": 1.5}], "group_width must be a positive integer, got 1.5"),
    ([{"name": "grouped", "groups": 2}, {"name": "grouped", "groups": 2}], "grouped is applied twice"),
    ([{"name": "grouped", "depth": 2}], "unknown option 'depth' for model transform 'grouped'"),
])
def test_grouped_bad_options_are_one_line(transforms, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        r18lab.create_model("resnet18", num_classes=10, width=0.25, transforms=transforms)


def test_bottleneck_groups_only_its_3x3_conv():
    m = r18lab.create_model("resnet50", num_classes=10, width=0.25, transforms=[{"name": "grouped", "groups": 2}])
    assert sum(isinstance(x, GroupedConv) for x in m.modules()) == 16
    assert isinstance(m.layer1[0].conv2, GroupedConv) and type(m.layer1[0].conv1) is nn.Conv2d


# -- quarter-width and WRN-d-1 anchors of the tiny checks (spec 003 §6 T1, T3; 10 classes) -------------------
@pytest.mark.parametrize("name,width,variant,residual,params,flops", [
    ("resnet18", 0.25, "g8", True, 172_634, 8_692_992), ("resnet18", 0.25, "g8", False, 161_434, 8_299_776),
    ("resnet18", 0.25, "G4", True, 123_386, 8_803_584), ("resnet18", 0.25, "g2", True, 411_962, None),
    ("resnet18", 0.25, "g2", False, 400_762, None), ("resnet18", 0.25, "g16", True, 132_746, None),
    ("resnet18", 0.25, "g16", False, 121_546, None), ("resnet18", 1.0, "std", True, 11_173_962, None),
    ("wrn16_1", 1.0, "std", True, 175_066, 26_657_408), ("wrn16_1", 1.0, "std", False, 172_506, None),
    ("wrn40_1", 1.0, "std", True, 563_930, 83_280_512), ("wrn40_1", 1.0, "std", False, 561_370, None),
])
def test_tiny_check_anchors(name, width, variant, residual, params, flops):
    m = r18lab.create_model(name, num_classes=10, width=width, transforms=variant_transforms(variant, residual))
    assert count_params(m) == params
    assert flops is None or count_flops(m, (3, 32, 32)) == flops


@pytest.mark.parametrize("name,params", [("wrn22_2", 1_091_252), ("wrn22_10", 26_855_604), ("wrn28_2", 1_479_220),
                                         ("wrn40_2", 2_255_156), ("resnet18", 11_220_132)])
def test_standard_conv_anchors_cifar100(name, params):
    """Spec 003 §1.3–1.4 standard-conv anchors (R, CIFAR-100 head)."""
    assert count_params(r18lab.create_model(name, num_classes=100)) == params


def test_generic_wrn_equals_its_shortcut_and_takes_depth_widen_dropout(capsys):
    a = _info(capsys, "wrn", "depth=22", "widen=2", "num_classes=100")
    assert a["params"] == _info(capsys, "wrn22_2", "num_classes=100")["params"] == 1_091_252
    m = r18lab.create_model("wrn", num_classes=10, depth=10, widen=1, dropout=0.5)
    assert [b.dropout.p for b in m.modules() if hasattr(b, "dropout") and isinstance(b.dropout, nn.Dropout)] == [0.5] * 3
    assert all(isinstance(b.dropout, nn.Identity) for b in r18lab.create_model(
        "wrn16_1", num_classes=10, dropout=0.0).modules() if hasattr(b, "dropout"))


# -- pre-activation WRN block and NR semantics -------------------------------------------------------------
def test_wrn_block_is_pre_activation_with_a_projection_on_the_activated_input():
    m = r18lab.create_model("wrn16_1", num_classes=10, dropout=0.0).eval()
    x = torch.randn(2, 16, 8, 8)
    block = m.layer2[0]  # 16 → 32, stride 2: shortcut = 1×1 conv (no BN) on relu(bn1(x))
    act = torch.relu(block.bn1(x))
    residual_branch = block.conv2(torch.relu(block.bn2(block.conv1(act))))
    expected = residual_branch + block.shortcut(act)
    assert torch.allclose(block(x), expected, atol=1e-6) and block.shortcut.kernel_size == (1, 1)
    same = m.layer1[0]  # 16 → 16: identity on the raw x
    inner = same.conv2(torch.relu(same.bn2(same.conv1(torch.relu(same.bn1(x))))))
    assert same.shortcut is None and torch.allclose(same(x), inner + x, atol=1e-6)
    plain = r18lab.create_model("wrn16_1", num_classes=10, dropout=0.0, transforms=["no_residual"]).eval()
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if "shortcut" not in k})
    assert torch.allclose(plain.layer2[0](x), residual_branch, atol=1e-6)  # pre-activation kept, no add
    assert torch.allclose(plain.layer1[0](x), inner, atol=1e-6)


def test_mobilenet_v2_cifar_has_ten_additions_and_no_projections():
    m = r18lab.create_model("mobilenet_v2", num_classes=100)
    blocks = [b for b in m.modules() if hasattr(b, "grouping_targets")]
    assert len(blocks) == 17 and sum(b.residual for b in blocks) == 10
    assert m.pre[0].kernel_size == (1, 1) and m.pre[0].padding == (1, 1) and m.pre[0].bias is not None
    out = m(torch.randn(2, 3, 32, 32))
    assert out.features.shape == (2, 1280)
    nr = r18lab.create_model("mobilenet_v2", num_classes=100, transforms=["no_residual"])
    assert not any(b.residual for b in nr.modules() if hasattr(b, "grouping_targets"))
    assert list(nr.state_dict()) == list(m.state_dict())  # no parameters removed: R and NR count the same
    nr.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(nr.eval()(x).logits["main"], m.eval()(x).logits["main"])


def test_mobilenet_v2_grouped_changes_only_the_depthwise_conv():
    m = r18lab.create_model("mobilenet_v2", num_classes=100, transforms=[{"name": "grouped", "groups": 4}])
    dw = m.stage3[1].conv[3]
    assert type(dw) is nn.Conv2d and dw.groups == 4 and dw.bias is not None and (dw.in_channels, dw.out_channels) == (192, 192)
    assert not any(isinstance(x, GroupedConv) for x in m.modules())


def test_mobilenet_v2_imagenet_layout_matches_torchvision():
    """torchvision's mobilenet_v2: 3,504,872 parameters, ~300.8 M MACs at 224², its module names."""
    m = r18lab.create_model("mobilenet_v2", num_classes=1000, stem="imagenet")
    assert count_params(m) == 3_504_872 and count_flops(m, (3, 224, 224)) == 300_774_272
    names = set(m.state_dict())
    assert {"features.0.0.weight", "features.1.conv.0.0.weight", "features.1.conv.1.weight",
            "features.2.conv.1.0.weight", "features.17.conv.2.weight", "features.18.1.weight", "fc.weight"} <= names
    out = m.eval()(torch.randn(1, 3, 64, 64))
    assert out.logits["main"].shape == (1, 1000)


@pytest.mark.parametrize("name,stages", [("wrn16_1", [16, 32, 64]),
                                         ("mobilenet_v2", [16, 24, 32, 64, 96, 160, 320])])
def test_feature_refiner_and_stage_maps_work_on_the_new_backbones(name, stages):
    m = r18lab.create_model(name, num_classes=10, heads=["main", {"name": "fr", "dim": 16}],
                            transforms=["no_residual", {"name": "grouped", "groups": 2}])
    out = m(torch.randn(2, 3, 32, 32))
    assert set(out.logits) == {"main", "fr"} and out.features.shape[1] == m.num_features
    out.logits["fr"].sum().backward()
    assert m.conv1.weight.grad is not None if name == "wrn16_1" else m.pre[0].weight.grad is not None
    _, maps = m._backbone.forward_features(torch.randn(1, 3, 32, 32), stages=True)
    assert [t.shape[1] for t in maps] == stages == m._backbone.stage_channels


def test_grouped_plain_wrn_checkpoint_round_trips(tmp_path):
    from r18lab.models.io import load_checkpoint, save_model
    spec = {"name": "wrn", "num_classes": 10, "depth": 10, "widen": 2, "dropout": 0.3,
            "transforms": ["no_residual", {"name": "grouped", "group_width": 4}]}
    m = r18lab.create_model(**{**spec, "name": "wrn"}).eval()
    save_model(m, tmp_path / "m.safetensors", spec)
    loaded = load_checkpoint(tmp_path / "m.safetensors", "cpu").model.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x).logits["main"], m(x).logits["main"])


@pytest.mark.parametrize("args,message", [
    (["wrn", "stem=imagenet"], "backbone wrn has only the CIFAR stem (3×3 conv), got stem='imagenet'; set stem=cifar"),
    (["wrn", "depth=17"], "wrn depth must be 6n + 4 with n ≥ 1 (10, 16, 22, 28, 40, ...), got 17"),
    (["resnet18", "depth=16"], "unknown model option 'depth'"),
    (["mobilenet_v2", "transforms=[no_residual, no_residual]"],
     "transform no_residual: backbone MobileNetV2 has no residual shortcut to remove"),
    (["resnet18", "width=0.125", "transforms=[{name: grouped, groups: 16}]"],
     "transform grouped: layer layer1.0.conv1 has 8 input channels, not divisible by groups=16"),
    (["resnet18", "transforms=[{name: grouped, groups: 2, group_width: 4}]"], "takes exactly one of groups"),
])
def test_bad_model_options_exit_2_with_one_line(args, message, capsys):
    assert main(["models", "info", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_models_tables_reproduces_all_108_models_beside_the_printed_values(capsys, tmp_path):
    assert main(["models", "tables", "paper003", "--json", "--csv", str(tmp_path / "t.csv")]) == 0
    out = capsys.readouterr().out
    rows = json.loads(out[out.index("["):])
    assert len(rows) == 108 and all(r["params_match"] and r["flops_match"] for r in rows)
    assert {(r["family"], r["kind"], r["variant"]): r["params"] for r in rows} == EXACT_PARAMS
    assert (tmp_path / "t.csv").read_text().count("\n") == 109
    assert main(["models", "tables", "paper999"]) == 2
    assert capsys.readouterr().err == "error: no published cost tables named 'paper999'; choose one of: paper003\n"
