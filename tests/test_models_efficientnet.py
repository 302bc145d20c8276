"""EfficientNet-B3: paper 000's appendix A counts (CIFAR, 10 classes), torchvision's layout and count (ImageNet),
stage maps, and one training run through the engine."""
import math

import pytest
import torch

from r18lab.config import load_config
from r18lab.models.classifier import create_model
from r18lab.models.efficientnet import SameConv2d, round_channels
from r18lab.models.heads import refiner_param_count
from r18lab.registry import BACKBONES
from r18lab.train.engine import train

from helpers import tiny


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def cifar():
    torch.manual_seed(0)
    return create_model("efficientnet_b3", num_classes=10, stem="cifar")


def test_cifar_count_is_the_papers(cifar):
    assert _count(cifar) == 10_711_602  # paper 000, appendix A
    assert cifar.num_features == 1536 and _count(cifar.fc) == 1536 * 10 + 10


def test_imagenet_count_and_names_are_torchvisions():
    model = create_model("efficientnet_b3", num_classes=1000, stem="imagenet")
    assert _count(model) == 12_233_232  # torchvision EfficientNet_B3_Weights.IMAGENET1K_V1 meta["num_params"]
    names = set(model.state_dict())
    for key in ("features.0.0.weight", "features.0.1.running_var", "features.1.0.block.0.0.weight",
                "features.1.0.block.1.fc1.bias", "features.2.0.block.0.0.weight", "features.2.0.block.2.fc2.weight",
                "features.2.0.block.3.1.weight", "features.7.1.block.3.0.weight", "features.8.0.weight", "fc.weight"):
        assert key in names, key
    assert [len(model.features[i]) for i in range(1, 8)] == [2, 3, 3, 5, 5, 6, 2]  # ceil(n · 1.4)
    assert not any(k.startswith("classifier") for k in names)  # torchvision's classifier.1 is our fc
    # the CIFAR layout has the same parameters under the same names, so a torchvision checkpoint loads into both
    cifar = create_model("efficientnet_b3", num_classes=1000, stem="cifar")
    assert {k: v.shape for k, v in cifar.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_feature_refiner_overhead():
    base = _count(create_model("efficientnet_b3", num_classes=10))
    fr64 = create_model("efficientnet_b3", num_classes=10, heads=["main", "fr"])
    assert _count(fr64) - base == refiner_param_count(1536, 64, 10) == 107_594
    # appendix A's +82,660 is f = 50: the authors' default feature size when `-fs` is not given, as in their
    # README's fr_efficientnet command (lowdataregime/active_learning/active_learning.py)
    fr50 = create_model("efficientnet_b3", num_classes=10, heads=["main", "fr"], fr_dim=50)
    assert _count(fr50) - base == refiner_param_count(1536, 50, 10) == 82_660


def test_forward_at_32_and_stage_maps(cifar):
    cifar.eval()
    x = torch.randn(2, 3, 32, 32)
    out = cifar(x)
    assert out.logits["main"].shape == (2, 10) and out.features.shape == (2, 1536)
    backbone = BACKBONES.build("efficientnet_b3")
    feats, maps = backbone.forward_features(x, stages=True)
    assert feats.shape == (2, 1536) and backbone.forward_features(x)[1] == []
    assert [tuple(m.shape[1:]) for m in maps] == [(24, 16, 16), (32, 8, 8), (48, 4, 4), (96, 2, 2), (136, 2, 2),
                                                 (232, 1, 1), (384, 1, 1)]
    assert [m.shape[1] for m in maps] == backbone.stage_channels
    fr = create_model("efficientnet_b3", num_classes=10, heads=["main", "fr"], fr_dim=50).eval()
    assert fr(x).logits["fr"].shape == (2, 10)


def test_tf_same_padding_and_rounding():
    conv = SameConv2d(1, 1, 5, 2, 0, bias=False)
    torch.nn.init.ones_(conv.weight)
    y = conv(torch.ones(1, 1, 8, 8))
    assert y.shape == (1, 1, 4, 4)
    # TF "same" pads 1 before and 2 after (torchvision pads 2 and 2): the first window covers 4×4 ones, the last 3×3
    assert y[0, 0, 0, 0].item() == 16.0 and y[0, 0, -1, -1].item() == 9.0
    for c, expected in ((32 * 1.2, 40), (16 * 1.2, 24), (40 * 1.2, 48), (112 * 1.2, 136), (320 * 1.2, 384)):
        assert round_channels(c) == expected
    assert math.ceil(4 * 1.4) == 6


def test_drop_connect_only_in_training():
    model = create_model("efficientnet_b3", num_classes=3, width=0.0625)
    last = model.features[6][-1]
    assert last.residual and last.drop > 0
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x).logits["main"], model(x).logits["main"])


def test_one_training_run(tmp_path):
    summary = train(load_config(None, tiny("model.name=efficientnet_b3", "train.epochs=1",
                                           "model.heads=[main, fr]")), tmp_path / "run")
    assert (tmp_path / "run" / "summary.json").exists()
    assert summary["status"] == "done" and summary["steps"] > 0
    assert all(math.isfinite(summary["final"][f"eval/{h}/loss"]) for h in ("main", "fr"))


def test_bad_stem_and_no_residual():
    from r18lab.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown stem 'resnet'"):
        create_model("efficientnet_b3", num_classes=10, stem="resnet")
    model = create_model("efficientnet_b3", num_classes=10, width=0.0625, transforms=["no_residual"])
    assert not any(getattr(m, "residual", False) for m in model.modules())
