"""DenseNet-121 and VGG-11 (paper 000, appendix A table and appendix B): exact counts in both layouts, the Feature
Refiner's overhead, torchvision names, stage maps, and one training run through the engine."""
from __future__ import annotations

import json

import pytest
import torch

import r18lab
from r18lab.analysis.cost import count_params
from r18lab.cli import main
from r18lab.config import load_config
from r18lab.errors import ConfigError
from r18lab.models.heads import refiner_param_count
from r18lab.train.engine import train

from helpers import tiny

DENSENET121_FEATURES = 6_953_856  # torchvision's densenet121 without its classifier (7,978,856 − 1,025,000)
VGG11_CONVS = 9_220_480  # the eight 3×3 convs with biases


def _info(capsys, name: str, *overrides: str) -> dict:
    assert main(["models", "info", name, *overrides, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_densenet121_cifar_count_is_the_papers_with_the_authors_bias_free_head(capsys):
    info = _info(capsys, "densenet121", "num_classes=10", "stem=cifar")
    assert info["params"] - info["head_params"]["main"] == DENSENET121_FEATURES
    assert DENSENET121_FEATURES + 1024 * 10 == 6_964_096  # the appendix count: Linear(1024, 10, bias=False)
    model = r18lab.create_model("densenet121", num_classes=10, stem="cifar")
    assert model._backbone.fc_bias is False
    assert model.fc.bias is None  # the classifier reads backbone.fc_bias
    assert info["params"] == 6_964_096


def test_densenet121_feature_refiner_overhead_is_exact(capsys):
    plain = _info(capsys, "densenet121", "num_classes=10", "stem=cifar")
    fr = _info(capsys, "densenet121", "num_classes=10", "stem=cifar", "heads=[main,fr]")
    assert fr["params"] - plain["params"] == fr["head_params"]["fr"] == 74_826 == refiner_param_count(1024, 64, 10)


def test_imagenet_layouts_match_torchvision_counts_and_names(capsys):
    assert _info(capsys, "densenet121", "num_classes=1000", "stem=imagenet")["params"] == 7_978_856
    assert _info(capsys, "vgg11", "num_classes=1000", "stem=imagenet")["params"] == 132_863_336
    d = r18lab.create_model("densenet121", num_classes=1000, stem="imagenet")
    assert d.fc.bias is not None and d.fc.weight.shape == (1000, 1024)
    assert {"features.conv0.weight", "features.norm0.running_var", "features.denseblock1.denselayer1.norm1.weight",
            "features.denseblock1.denselayer6.conv2.weight", "features.transition3.conv.weight",
            "features.denseblock4.denselayer16.conv1.weight", "features.norm5.bias", "fc.weight"} <= set(d.state_dict())
    v = r18lab.create_model("vgg11", num_classes=1000, stem="imagenet")
    shapes = {k: tuple(t.shape) for k, t in v.state_dict().items()}
    assert shapes == {**{f"features.{i}.{p}": shapes[f"features.{i}.{p}"] for i in (0, 3, 6, 8, 11, 13, 16, 18)
                         for p in ("weight", "bias")},
                      "classifier.0.weight": (4096, 25088), "classifier.0.bias": (4096,),
                      "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,),
                      "fc.weight": (1000, 4096), "fc.bias": (1000,)}  # torchvision's keys; classifier.6 = fc
    assert v.eval()(torch.randn(1, 3, 64, 64)).logits["main"].shape == (1, 1000)


def test_vgg11_cifar_plain_and_feature_refiner_replacing_its_classifier(capsys):
    """Appendix B: VGG-11 with its own FC classifier (512 → 4096 → 4096 → 10, the authors' CIFAR setting) against
    the Feature Refiner in its place."""
    plain = _info(capsys, "vgg11", "num_classes=10", "stem=cifar")
    assert plain["params"] == VGG11_CONVS + (512 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 10 + 10) == 28_144_010
    fr = _info(capsys, "vgg11", "num_classes=10", "stem=cifar", "classifier=false", "heads=[fr]")
    assert fr["params"] == VGG11_CONVS + refiner_param_count(512, 64, 10) == 9_262_538
    gated = _info(capsys, "vgg11", "num_classes=10", "stem=cifar", "classifier=false", "heads=[main,fr]")
    assert gated["params"] == 9_262_538 + 5_130  # plus the gated linear the FR distils into
    assert plain["params"] - fr["params"] == 18_881_472  # 67.1 % fewer weights


@pytest.mark.parametrize("name,options,stages,features", [
    ("densenet121", {}, [32, 64, 128, 128], 128),
    ("vgg11", {}, [8, 16, 32, 64, 64], 512),
    ("vgg11", {"classifier": False, "batch_norm": True}, [8, 16, 32, 64, 64], 64),
])
def test_forward_at_32_with_stage_maps_and_the_feature_refiner(name, options, stages, features):
    m = r18lab.create_model(name, num_classes=10, width=0.125, heads=["main", {"name": "fr", "dim": 16}], **options)
    out = m(torch.randn(2, 3, 32, 32))
    assert set(out.logits) == {"main", "fr"} and out.features.shape == (2, features) == (2, m.num_features)
    out.logits["fr"].sum().backward()
    assert next(m.features.parameters()).grad is not None
    _, maps = m._backbone.forward_features(torch.randn(2, 3, 32, 32), stages=True)
    assert [t.shape[1] for t in maps] == stages == m._backbone.stage_channels


@pytest.mark.parametrize("name,extra", [("densenet121", []), ("vgg11", ["model.options={classifier: false}"])])
def test_one_training_run_through_the_engine(tmp_path, name, extra):
    cfg = load_config(None, tiny(f"model.name={name}", "model.heads=[main, fr]", "train.epochs=1",
                                 "data.options={num_classes: 4, image_size: 32, n: 32}", *extra))
    summary = train(cfg, tmp_path / "run")
    assert "eval/main/acc" in summary["final"]
    from r18lab.models.io import load_checkpoint
    model = load_checkpoint(tmp_path / "run" / "model.safetensors", "cpu").model.eval()  # reopens with its options
    assert model(torch.randn(2, 3, 32, 32)).logits["fr"].shape == (2, 4)


@pytest.mark.parametrize("name,options,message", [
    ("vgg11", {"hidden": 0}, "vgg hidden must be a positive integer"),
    ("vgg11", {"classifier": "no"}, "vgg classifier must be true or false"),
    ("densenet121", {"stem": "tiny"}, "unknown stem 'tiny'"),
    ("densenet121", {"drop_rate": 1.5}, "drop_rate must be in [0, 1)"),
])
def test_bad_options_are_one_line_config_errors(name, options, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        r18lab.create_model(name, num_classes=10, **options)


def test_vgg11_bn_without_its_classifier_counts_the_batch_norms():
    a = r18lab.create_model("vgg11", num_classes=10, classifier=False, batch_norm=True)
    assert count_params(a) == VGG11_CONVS + 2 * (64 + 128 + 256 * 2 + 512 * 4) + 5_130
