"""The small backbones of paper 002d: MLP 100-100 and LeNet (spec 002d §1 "Model", §3 parameter counts)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jvp

import r18lab.models.classifier  # noqa: F401  (registers the other backbones and the transforms)
import r18lab.models.small  # noqa: F401  (registers mlp, lenet)
from r18lab.errors import ConfigError
from r18lab.models.classifier import create_model
from r18lab.models.activations import ACTIVATIONS, make_activation
from r18lab.models.small import LeNet, MLP
from r18lab.registry import BACKBONES


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_with_one_output_match_spec():
    # MLP: 3072·100+100 + 100·100+100 + 101
    assert 3072 * 100 + 100 + 100 * 100 + 100 + 101 == 317_501
    assert _count(create_model("mlp", num_classes=1)) == 317_501
    # LeNet: 456 + 2,416 + 8·8·16·120+120 + 10,164 + 85
    assert 3 * 25 * 6 + 6 + 6 * 25 * 16 + 16 + 8 * 8 * 16 * 120 + 120 + 120 * 84 + 84 + 84 + 1 == 136_121
    assert _count(create_model("lenet", num_classes=1)) == 136_121


def test_lenet_count_at_half_width_greyscale_28():
    # width ½: filters 3, 8; units 60, 42. in_channels 1, image 28 → pooled map 8 × 7 × 7 = 392
    conv1 = 1 * 5 * 5 * 3 + 3  # 78
    conv2 = 3 * 5 * 5 * 8 + 8  # 608
    fc1 = 392 * 60 + 60  # 23,580
    fc2 = 60 * 42 + 42  # 2,562
    fc = 42 * 1 + 1  # 43 (one logit, as in the paper)
    assert conv1 + conv2 + fc1 + fc2 + fc == 26_871
    model = create_model("lenet", num_classes=1, width=0.5, in_channels=1, image_size=28)
    assert _count(model) == 26_871
    assert model(torch.randn(2, 1, 28, 28)).logits["main"].shape == (2, 1)


def test_mlp_width_and_names():
    model = create_model("mlp", num_classes=3, width=0.5, in_channels=1, image_size=8)
    names = [n for n, _ in model.named_parameters()]
    assert names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc.weight", "fc.bias"]
    assert model.fc1.in_features == 64 and model.fc1.out_features == 50 and model.fc.in_features == 50
    lenet_names = {n.split(".")[0] for n, _ in create_model("lenet", num_classes=1).named_parameters()}
    assert lenet_names == {"conv1", "conv2", "fc1", "fc2", "fc"}


@pytest.mark.parametrize("name,stage_shapes", [
    ("mlp", [(2, 100), (2, 100)]),
    ("lenet", [(2, 6, 16, 16), (2, 16, 8, 8)]),
])
def test_shapes_and_stages(name, stage_shapes):
    backbone = BACKBONES.build(name)
    x = torch.randn(2, 3, 32, 32)
    feats, maps = backbone.forward_features(x, stages=True)
    assert feats.shape == (2, backbone.num_features)
    assert [tuple(m.shape) for m in maps] == stage_shapes
    assert [m.shape[1] for m in maps] == backbone.stage_channels
    assert backbone.forward_features(x)[1] == []
    assert torch.equal(backbone(x), feats)
    out = create_model(name, num_classes=5)(x)
    assert out.logits["main"].shape == (2, 5) and out.features.shape == (2, backbone.num_features)


def test_activation_option_changes_the_function():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    for cls in (MLP, LeNet):
        models = {a: cls(activation=a) for a in ACTIVATIONS}
        state = models["relu"].state_dict()
        outs = {}
        for a, m in models.items():
            m.load_state_dict(state)
            outs[a] = m(x)
        assert not torch.allclose(outs["relu"], outs["gelu"])
        assert not torch.allclose(outs["gelu"], outs["gelu_tanh"])
        assert torch.allclose(outs["gelu"], outs["gelu_tanh"], atol=1e-2)
    assert isinstance(make_activation("relu"), nn.ReLU) and not make_activation("relu").inplace
    assert make_activation("gelu").approximate == "none"
    assert make_activation("gelu_tanh").approximate == "tanh"


def test_bad_options_raise_config_error():
    with pytest.raises(ConfigError, match="relu, gelu, gelu_tanh"):
        create_model("mlp", num_classes=1, activation="swish")
    with pytest.raises(ConfigError, match="relu, gelu, gelu_tanh"):
        create_model("lenet", num_classes=1, activation="tanh")
    with pytest.raises(ConfigError, match="divisible by 4"):
        create_model("lenet", num_classes=1, image_size=30)
    for bad in (0, -4, 32.0, True):
        with pytest.raises(ConfigError, match="image_size"):
            create_model("mlp", num_classes=1, image_size=bad)
    for name in ("mlp", "lenet"):
        with pytest.raises(ConfigError, match="stem=cifar"):
            create_model(name, num_classes=1, stem="imagenet")
        with pytest.raises(ConfigError, match="no residual"):
            create_model(name, num_classes=1, transforms=["no_residual"])
        with pytest.raises(ConfigError, match="unknown model option"):
            create_model(name, num_classes=1, depth=3)


def test_mlp_wrong_input_size_names_the_fix():
    with pytest.raises(ValueError, match="image_size"):
        BACKBONES.build("mlp", image_size=16)(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("name,activation", [("mlp", "gelu"), ("lenet", "relu"), ("lenet", "gelu_tanh")])
def test_torch_func_jvp_matches_finite_difference(name, activation):
    torch.manual_seed(0)
    model = create_model(name, num_classes=1, activation=activation, in_channels=1, image_size=8).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    tangent = {k: torch.randn_like(v) for k, v in params.items()}
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)

    def f(p):
        return functional_call(model, p, (x,)).logits["main"]

    out, dout = jvp(f, (params,), (tangent,))
    assert torch.allclose(out, model(x).logits["main"])
    eps = 1e-6
    plus = f({k: v + eps * tangent[k] for k, v in params.items()})
    minus = f({k: v - eps * tangent[k] for k, v in params.items()})
    fd = (plus - minus) / (2 * eps)
    assert torch.linalg.norm(dout - fd) <= 1e-3 * torch.linalg.norm(fd)
