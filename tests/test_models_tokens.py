"""MLP-Mixer and ViT (paper 000, Figure 4): exact counts of the timm/torchvision reference sizes, timm's names, stage
maps, the Feature Refiner, training through the engine with the class token saved and reloaded; and the key maps
that let torchvision/timm files of the other backbones start a model (`model.init_from`)."""
from __future__ import annotations

import json

import pytest
import torch

import r18lab
from r18lab.cli import main
from r18lab.config import load_config
from r18lab.errors import CheckpointError, ConfigError
from r18lab.models.heads import refiner_param_count
from r18lab.models.pretrained import init_from_checkpoint
from r18lab.models.tokens import stage_blocks
from r18lab.train.engine import train

from helpers import tiny


def _info(capsys, name: str, *overrides: str) -> dict:
    assert main(["models", "info", name, *overrides, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def mixer_count(d: int, depth: int, tokens: int, patch: int, classes: int) -> int:
    """Hand count: patch conv, per block 2 LayerNorms + token MLP (tokens→d/2→tokens) + channel MLP (d→4d→d),
    final LayerNorm, linear head."""
    block = 2 * 2 * d + (tokens * d // 2 + d // 2) + (d // 2 * tokens + tokens) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return 3 * patch * patch * d + d + depth * block + 2 * d + d * classes + classes


def test_mixer_s16_at_imagenet_size_is_timms_count(capsys):
    info = _info(capsys, "mlp_mixer", "num_classes=1000", "stem=imagenet")
    assert info["params"] == mixer_count(512, 8, 196, 16, 1000) == 18_528_264  # timm mixer_s16_224


def test_vit_b16_at_imagenet_size_is_torchvisions_count(capsys):
    info = _info(capsys, "vit", "num_classes=1000", "stem=imagenet")
    assert info["params"] == 86_567_656  # torchvision vit_b_16 / timm vit_base_patch16_224


def test_cifar_sizes_use_4x4_patches_and_width_scales_dim_keeping_64_per_head(capsys):
    mixer = _info(capsys, "mlp_mixer", "num_classes=10", "stem=cifar", "width=0.25")
    assert mixer["params"] == mixer_count(128, 8, 64, 4, 10) == 1_132_170
    vit = r18lab.create_model("vit", num_classes=10, width=0.25)
    assert vit.pos_embed.shape == (1, 65, 192) and vit.blocks[0].attn.heads == 3  # ViT-Ti/4
    fr = _info(capsys, "vit", "num_classes=10", "stem=cifar", "width=0.25", "heads=[main,fr]")
    assert fr["params"] - _info(capsys, "vit", "num_classes=10", "stem=cifar", "width=0.25")["params"] \
        == refiner_param_count(192, 64, 10)


def test_timm_names_and_the_class_token_is_a_parameter_of_the_classifier():
    keys = set(r18lab.create_model("vit", num_classes=10, width=0.0625, depth=2).state_dict())
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.1.attn.qkv.weight", "blocks.1.mlp.fc2.bias",
            "norm.weight", "fc.weight"} <= keys
    keys = set(r18lab.create_model("mlp_mixer", num_classes=10, width=0.0625, depth=2).state_dict())
    assert {"stem.proj.weight", "blocks.0.norm1.weight", "blocks.0.mlp_tokens.fc1.weight",
            "blocks.1.mlp_channels.fc2.bias", "norm.bias", "fc.weight"} <= keys


def test_stage_blocks_are_the_last_block_of_each_quarter():
    assert stage_blocks(12) == [2, 5, 8, 11] and stage_blocks(8) == [1, 3, 5, 7] and stage_blocks(2) == [0, 1]


@pytest.mark.parametrize("name", ["mlp_mixer", "vit"])
def test_stage_maps_are_patch_grids_and_every_token_mixes(name):
    m = r18lab.create_model(name, num_classes=10, width=0.0625, depth=4, heads=["main", {"name": "fr", "dim": 8}])
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    feats, maps = m._backbone.forward_features(x, stages=True)
    assert [tuple(t.shape) for t in maps] == [(2, m.num_features, 8, 8)] * 4 and feats.shape == (2, m.num_features)
    # the pooled feature of image 0 depends on the patch in the opposite corner (token/attention mixing) and not
    # on image 1 (a random projection: the plain sum of a LayerNorm output is 0 whatever the input)
    (feats[0] * torch.randn(m.num_features, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert x.grad[0, :, -4:, -4:].abs().sum() > 0 and x.grad[1].abs().sum() == 0


def test_the_class_token_drives_vit_features():
    m = r18lab.create_model("vit", num_classes=10, width=0.0625, depth=1).eval()
    x = torch.randn(1, 3, 32, 32)
    before = m(x).features.clone()
    with torch.no_grad():
        m.cls_token.add_(1.0)
    assert not torch.allclose(before, m(x).features)


@pytest.mark.parametrize("name", ["mlp_mixer", "vit"])
def test_train_save_reload_through_the_engine(tmp_path, name):
    cfg = load_config(None, tiny(f"model.name={name}", "model.heads=[main, fr]", "train.epochs=1",
                                 "model.options={depth: 2, image_size: 8, patch_size: 2}", "optim.name=adamw",
                                 "optim.lr=0.001"))
    summary = train(cfg, tmp_path / "run")
    assert "eval/fr/acc" in summary["final"]
    from r18lab.models.io import load_checkpoint
    loaded = load_checkpoint(tmp_path / "run" / "model.safetensors", "cpu").model
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    key = "cls_token" if name == "vit" else "stem.proj.weight"
    assert torch.equal(loaded.state_dict()[key], saved[key])
    if name == "vit":
        assert not torch.all(saved["cls_token"] == 0)  # trained, not the zero it would be if it were not registered


@pytest.mark.parametrize("name,options,message", [
    ("vit", {"num_heads": 5}, "not divisible by num_heads=5"),
    ("vit", {"image_size": 30}, "not a multiple of patch_size 4"),
    ("mlp_mixer", {"depth": 0}, "depth must be a positive integer"),
    ("mlp_mixer", {"stem": "tiny"}, "unknown stem 'tiny'"),
])
def test_bad_sizes_are_one_line_config_errors(name, options, message):
    with pytest.raises(ConfigError, match=message):
        r18lab.create_model(name, num_classes=10, **options)


def test_an_image_of_another_size_names_the_option_to_set():
    m = r18lab.create_model("mlp_mixer", num_classes=10, width=0.0625, depth=1)
    with pytest.raises(ValueError, match="model.options.image_size"):
        m(torch.randn(1, 3, 16, 16))


# --- foreign key maps for model.init_from ---------------------------------------------------------------------

def _foreign(model: torch.nn.Module, rename: dict[str, str]) -> dict[str, torch.Tensor]:
    """The model's state dict under another library's names (our name → theirs), values randomised."""
    out = {}
    for k, v in model.state_dict().items():
        for ours, theirs in rename.items():
            if k.startswith(ours):
                k = theirs + k[len(ours):]
        out[k] = torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v
    return out


def _old_densenet_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    import re
    return {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()}


@pytest.mark.parametrize("name,options,rename,old", [
    ("densenet121", {"stem": "imagenet"}, {"fc.": "classifier."}, True),
    ("vgg11", {"stem": "imagenet"}, {"fc.": "classifier.6."}, False),
    ("efficientnet_b3", {"stem": "imagenet"}, {"fc.": "classifier.1."}, False),
    ("mlp_mixer", {}, {"fc.": "head."}, False),
    ("vit", {}, {"fc.": "head."}, False),
])
def test_torchvision_and_timm_files_start_the_backbone(tmp_path, name, options, rename, old):
    kw = dict(width=0.125, **options) if name not in ("mlp_mixer", "vit") else dict(width=0.0625, depth=2)
    source = r18lab.create_model(name, num_classes=1000, **kw)
    state = _foreign(source, rename)
    if old:  # the published file predates PyTorch 0.4: old layer names, no BatchNorm step counters
        state = {k: v for k, v in _old_densenet_names(state).items() if not k.endswith("num_batches_tracked")}
        assert any(".norm.1." in k for k in state)
    torch.save(state, tmp_path / "theirs.pth")
    target = r18lab.create_model(name, num_classes=7, heads=["main", "fr"], **kw)
    fresh_fc = target.fc.weight.clone()
    init_from_checkpoint(target, tmp_path / "theirs.pth")
    own = target.state_dict()
    backbone = [k for k in own if not k.startswith(("fc.", "heads."))]
    theirs = {(_rename_back(k, rename, old)): v for k, v in state.items()}
    assert all(torch.equal(own[k], theirs[k]) for k in backbone if k in theirs)
    assert all(k.endswith("num_batches_tracked") for k in backbone if k not in theirs)
    assert torch.equal(target.fc.weight, fresh_fc)  # heads are not copied unless asked


def _rename_back(key: str, rename: dict[str, str], old: bool) -> str:
    import re
    if old:
        key = re.sub(r"(denselayer\d+\.(?:norm|conv))\.([12])\.", r"\1\2.", key)
    for ours, theirs in rename.items():
        if key.startswith(theirs):
            key = ours + key[len(theirs):]
    return key


def test_a_file_of_another_architecture_lists_the_first_mismatched_keys(tmp_path):
    torch.save(r18lab.create_model("resnet18", num_classes=10, width=0.125).state_dict(), tmp_path / "r18.pth")
    target = r18lab.create_model("densenet121", num_classes=10, width=0.125)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        init_from_checkpoint(target, tmp_path / "r18.pth")


def test_caltech101_counts_of_appendix_table_2(capsys):
    """Paper 000, appendix Table 2, Caltech column: ResNet-18 (ImageNet layout, 101 classes) and FR width 256."""
    plain = _info(capsys, "resnet18", "num_classes=101", "stem=imagenet")
    fr = _info(capsys, "resnet18", "num_classes=101", "stem=imagenet", "heads=[main,fr]")
    assert plain["params"] == 11_228_325 and fr["params"] - plain["params"] == 289_893


@pytest.mark.parametrize("method", ["resnet34", "fr-resnet34", "densenet121", "fr-densenet121", "efficientnet_b3",
                                    "fr-efficientnet_b3", "vgg11", "fr-vgg11", "mlp_mixer", "vit"])
def test_every_backbone_is_a_protocol_method(method):
    from r18lab.config import _deep_merge, build_config, config_dict
    from r18lab.protocols.methods import METHODS
    cfg = config_dict(build_config(_deep_merge({"model": {"width": 0.0625}}, METHODS[method])))
    assert cfg["model"]["name"] == method.removeprefix("fr-")
    assert ("fr" in cfg["model"]["heads"]) == method.startswith("fr-")
    model = r18lab.create_model(cfg["model"]["name"], num_classes=10, width=0.0625, heads=cfg["model"]["heads"],
                                **cfg["model"]["options"])
    assert model(torch.randn(2, 3, 32, 32)).logits["main"].shape == (2, 10)
    if method in ("mlp_mixer", "vit"):
        assert cfg["optim"]["name"] == "adamw" and cfg["schedule"]["warmup_epochs"] == 5
