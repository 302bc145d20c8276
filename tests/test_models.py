"""Exact parameter counts from the papers, torchvision naming, heads, the gradient gate, export."""
import pytest
import torch

import r18lab
from r18lab.analysis.cost import count_flops, count_params, head_params
from r18lab.errors import ConfigError
from r18lab.models import export_state
from r18lab.models.heads import refiner_param_count


@pytest.mark.parametrize("stem,classes,expected", [
    ("cifar", 10, 11_173_962), ("imagenet", 101, 11_228_325), ("imagenet", 1000, 11_689_512)])
def test_resnet18_parameter_counts(stem, classes, expected):
    assert count_params(r18lab.create_model("resnet18", num_classes=classes, stem=stem)) == expected


def test_resnet34_and_50_match_torchvision_counts():
    assert count_params(r18lab.create_model("resnet34", num_classes=1000, stem="imagenet")) == 21_797_672
    assert count_params(r18lab.create_model("resnet50", num_classes=1000, stem="imagenet")) == 25_557_032


@pytest.mark.parametrize("stem,classes,fr_dim,expected", [
    ("cifar", 10, 64, 42_058), ("cifar", 100, 64, 47_908), ("imagenet", 101, 256, 289_893)])
def test_feature_refiner_overhead(stem, classes, fr_dim, expected):
    m = r18lab.create_model("resnet18", num_classes=classes, stem=stem, heads=("main", "fr"))
    assert head_params(m)["fr"] == expected == refiner_param_count(512, fr_dim, classes)
    plain = r18lab.create_model("resnet18", num_classes=classes, stem=stem)
    assert count_params(m) - count_params(plain) == expected


def test_torchvision_state_dict_names():
    keys = list(r18lab.create_model("resnet18", num_classes=10).state_dict())
    assert keys[:2] == ["conv1.weight", "bn1.weight"]
    assert "layer2.0.downsample.0.weight" in keys and "layer4.1.bn2.running_var" in keys
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    assert len(keys) == 122  # torchvision resnet18: 62 params + 60 BN buffers


def test_output_structure_and_stem_shapes():
    m = r18lab.create_model("resnet18", num_classes=7, width=0.125, heads=("main", "fr"))
    out = m(torch.randn(3, 3, 16, 16))
    assert set(out.logits) == {"main", "fr"}
    assert out.logits["main"].shape == (3, 7) and out.features.shape == (3, 64)


def test_flops_of_resnet18_imagenet_is_1_8_g():
    m = r18lab.create_model("resnet18", num_classes=1000, stem="imagenet")
    assert count_flops(m, (3, 224, 224)) == 1_814_073_344


def test_gate_blocks_main_head_gradient_to_backbone():
    torch.manual_seed(0)
    m = r18lab.create_model("resnet18", num_classes=5, width=0.125, heads=("main", "fr"))
    assert m.gate == 0.0
    out = m(torch.randn(4, 3, 8, 8))
    out.logits["main"].sum().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for n, p in m.named_parameters()
               if not n.startswith(("fc.", "heads.")))
    assert m.fc.weight.grad.abs().sum() > 0  # main still fits itself to the backbone
    m.zero_grad()
    m(torch.randn(4, 3, 8, 8)).logits["fr"].sum().backward()
    assert m.conv1.weight.grad.abs().sum() > 0


def test_gate_factor_one_passes_gradient_and_default_without_fr():
    assert r18lab.create_model("resnet18", num_classes=5, width=0.125).gate == 1.0
    m = r18lab.create_model("resnet18", num_classes=5, width=0.125, heads=("main", "fr"), gate=1.0)
    m(torch.randn(2, 3, 8, 8)).logits["main"].sum().backward()
    assert m.conv1.weight.grad.abs().sum() > 0


def test_ablation_options_change_the_refiner():
    def fr_params(**kw):
        return head_params(r18lab.create_model("resnet18", num_classes=10, heads=("main", "fr"), **kw))["fr"]
    assert fr_params(fr_dim=512, fr_depth=0, fr_layernorm=False) == 512 * 512 + 512 + 513 * 10
    assert fr_params(fr_layernorm=False) == 42_058 - 4 * 64
    assert fr_params(fr_depth=3) == 42_058 + 2 * (64 * 64 + 64)


def test_export_keep_main_gives_plain_layout():
    m = r18lab.create_model("resnet18", num_classes=10, heads=("main", "fr"))
    state = export_state(m, ["main"])
    plain = r18lab.create_model("resnet18", num_classes=10)
    plain.load_state_dict(state, strict=True)
    assert sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k) == 11_173_962


def test_bad_model_requests_name_the_problem():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet19'"):
        r18lab.create_model("resnet19", num_classes=10)
    with pytest.raises(ConfigError, match="unknown head 'fx'"):
        r18lab.create_model("resnet18", num_classes=10, heads=("main", "fx"))
    with pytest.raises(ConfigError, match="unknown option 'dims' for head 'fr'"):
        r18lab.create_model("resnet18", num_classes=10, heads=("main", "fr"), fr_dims=3)
    with pytest.raises(ConfigError, match="unknown model option 'fr_dim'"):
        r18lab.create_model("resnet18", num_classes=10, fr_dim=64)


def test_peer_group_reports_each_peer():
    m = r18lab.create_model("resnet18", num_classes=4, width=0.125, peers=2)
    out = m(torch.randn(2, 3, 8, 8))
    assert set(out.logits) == {"main", "peer1/main"}
    assert not torch.equal(m.peers[0].conv1.weight, m.peers[1].conv1.weight)
