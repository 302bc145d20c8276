"""Seams of the model: heads with sub-heads and aux outputs, head options, model transforms, torch.func."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

import r18lab
from r18lab.analysis.cost import count_params, head_params
from r18lab.errors import ConfigError
from r18lab.models import ModelOutput
from r18lab.models.classifier import option_owner
from r18lab.models.heads import Head, gradient_gate
from r18lab.models.io import build_from_spec
from r18lab.registry import BACKBONES, HEADS, TRANSFORMS


# -- test-only registrations ---------------------------------------------------------------------------
@HEADS.register("seams_multi")
class MultiHead(Head):
    """n linear sub-heads; the head's logits are their mean; aux `score` = one number per sample."""

    aux_outputs = ("score",)

    def __init__(self, num_features: int, num_classes: int, *, n: int = 3) -> None:
        super().__init__()
        self.subs = nn.ModuleList(nn.Linear(num_features, num_classes) for _ in range(n))
        self.score = nn.Linear(num_features, 1)
        self.sub_heads = tuple(str(i) for i in range(n))

    def forward(self, features, stages):
        subs = {str(i): s(features) for i, s in enumerate(self.subs)}
        return {"logits": torch.stack(list(subs.values())).mean(0), "sub": subs,
                "aux": {"score": self.score(features).squeeze(1)}}


@HEADS.register("seams_liar")
class LiarHead(MultiHead):
    """Returns one sub-head fewer than it declares."""

    def forward(self, features, stages):
        out = super().forward(features, stages)
        out["sub"].pop("0")
        return out


class _Sized(Head):
    def __init__(self, num_features: int, num_classes: int, *, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, features, stages):
        return self.fc(features)


HEADS.register("seamsx")(type("SeamsX", (_Sized,), {}))
HEADS.register("seamsx_tok")(type("SeamsXTok", (_Sized,), {}))


@BACKBONES.register("seams_plain")
class PlainNet(nn.Module):
    """A backbone without residual blocks."""

    def __init__(self, *, stem: str = "cifar", width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.num_features = 4

    def forward_features(self, x, stages=False):
        y = self.conv1(x)
        return y.mean((2, 3)), [y] if stages else []


@TRANSFORMS.register("seams_project")
def project(backbone: nn.Module, dim: int = 5, tag: str = "") -> nn.Module:
    """Wrap a backbone with a linear map of its pooled features to `dim` (and log `tag`)."""

    class Projected(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.proj, self.num_features = backbone, nn.Linear(backbone.num_features, dim), dim
            self.log = getattr(backbone, "log", []) + [tag]

        def forward_features(self, x, stages=False):
            f, maps = self.inner.forward_features(x, stages)
            return self.proj(f), maps

    return Projected()


def tiny(**kw):
    return r18lab.create_model("resnet18", num_classes=kw.pop("num_classes", 4), width=0.0625, **kw)


# -- heads with several outputs ----------------------------------------------------------------------------
def test_sub_head_logits_and_aux_reach_the_output():
    torch.manual_seed(0)
    m = tiny(heads=["main", {"name": "seams_multi", "n": 2}]).eval()
    out = m(torch.randn(3, 3, 8, 8))
    assert list(out.logits) == ["main", "seams_multi", "seams_multi.0", "seams_multi.1"] == m.logit_names
    assert list(out.aux) == ["seams_multi.score"] == m.aux_names
    assert m.head_names == ["main", "seams_multi"]  # `heads: all` still means the top-level heads
    assert all(v.shape == (3, 4) for v in out.logits.values()) and out.aux["seams_multi.score"].shape == (3,)
    head = m.heads["seams_multi"]
    assert torch.equal(out.logits["seams_multi.1"], head.subs[1](out.features))
    assert torch.equal(out.logits["seams_multi"], (out.logits["seams_multi.0"] + out.logits["seams_multi.1"]) / 2)
    assert torch.equal(out.aux["seams_multi.score"], head.score(out.features).squeeze(1))
    assert tiny(heads=["main", "seams_multi"]).logit_names[-1] == "seams_multi.2"  # n defaults to 3
    assert tiny().eval()(torch.randn(2, 3, 8, 8)).aux == {}


def test_head_returning_other_sub_heads_than_declared_fails():
    m = tiny(heads=["seams_liar"])
    with pytest.raises(ValueError, match=r"head 'seams_liar' returned sub \['1', '2'\] but declares"):
        m(torch.randn(2, 3, 8, 8))


def test_peer_group_prefixes_sub_heads_and_aux():
    m = tiny(heads=["main", {"name": "seams_multi", "n": 2}], peers=2).eval()
    x = torch.randn(2, 3, 8, 8)
    out = m(x)
    assert list(out.logits) == m.logit_names == [
        "main", "seams_multi", "seams_multi.0", "seams_multi.1",
        "peer1/main", "peer1/seams_multi", "peer1/seams_multi.0", "peer1/seams_multi.1"]
    assert list(out.aux) == m.aux_names == ["seams_multi.score", "peer1/seams_multi.score"]
    assert m.head_names == ["main", "seams_multi", "peer1/main", "peer1/seams_multi"]
    peer1 = m.peers[1]
    assert torch.equal(out.aux["peer1/seams_multi.score"],
                       peer1.heads["seams_multi"].score(peer1(x).features).squeeze(1))
    assert set(head_params(m)) == {"main", "seams_multi", "peer1/main", "peer1/seams_multi"}


# -- head options -----------------------------------------------------------------------------------------
FR_512_0 = 512 * 512 + 512 + 2 * 512 + 513 * 10  # Linear(512→512), LayerNorm(512), Linear(512→10)


def test_head_entry_options_equal_the_legacy_flat_options():
    def fr(**kw):
        return head_params(r18lab.create_model("resnet18", num_classes=10, **kw))["fr"]
    assert fr(heads=["main", {"name": "fr", "dim": 512, "depth": 0}]) == FR_512_0
    assert fr(heads=["main", "fr"], fr_dim=512, fr_depth=0) == FR_512_0
    assert fr(heads=["main", {"name": "fr", "dim": 512}], fr_depth=0) == FR_512_0
    assert fr(heads=["main", {"name": "fr", "dim": 128, "depth": 0}]) == 128 * 513 + 2 * 128 + 129 * 10
    assert fr(heads=["main", {"name": "fr", "dim": 64}], stem="imagenet") == 42_058  # beats the stem default 256
    with pytest.raises(ConfigError, match=r"option 'dim' of head 'fr' is given twice \(fr_dim and in its heads"):
        r18lab.create_model("resnet18", num_classes=10, heads=["main", {"name": "fr", "dim": 8}], fr_dim=8)
    with pytest.raises(ConfigError, match="^unknown option 'dims' for head 'fr'; valid: dim, depth, layernorm, "
                                          "activation$"):
        r18lab.create_model("resnet18", num_classes=10, heads=["main", {"name": "fr", "dims": 8}])
    with pytest.raises(ConfigError, match="^a head entry is a name or"):
        r18lab.create_model("resnet18", num_classes=10, heads=["main", {"dim": 8}])


def test_flat_options_belong_to_the_longest_head_name():
    assert option_owner("seamsx_tok_dim") == "seamsx_tok" and option_owner("seamsx_dim") == "seamsx"
    assert option_owner("fr_dim") == "fr" and option_owner("frx_dim") is None
    m = tiny(heads=["main", "seamsx", "seamsx_tok"], seamsx_tok_dim=7, seamsx_dim=3)
    assert (m.heads["seamsx_tok"].dim, m.heads["seamsx"].dim) == (7, 3)
    with pytest.raises(ConfigError, match="^unknown model option 'seamsx_tok_dim': head 'seamsx_tok' is not in "
                                          r"heads=\['main', 'seamsx'\]"):
        tiny(heads=["main", "seamsx"], seamsx_tok_dim=7)


def test_spec_with_entries_and_transforms_round_trips_through_json():
    spec = {"name": "resnet18", "num_classes": 5, "stem": "cifar", "width": 0.125, "gate": None, "peers": 1,
            "heads": ["main", {"name": "fr", "dim": 16, "depth": 0}], "transforms": ["no_residual"],
            "in_channels": 1, "fr_layernorm": False}
    before = copy.deepcopy(spec)
    a = build_from_spec(spec)
    b = build_from_spec(json.loads(json.dumps(spec)))
    assert spec == before and a.transforms == b.transforms == ["no_residual"]
    assert count_params(b) == count_params(a) and head_params(b)["fr"] == 64 * 16 + 16 + 17 * 5
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(a.eval()(x).logits["fr"], b.eval()(x).logits["fr"])


# -- model transforms -------------------------------------------------------------------------------------
NO_RESIDUAL_R18 = 11_173_962 - (64 * 128 + 256) - (128 * 256 + 512) - (256 * 512 + 1024)  # minus 3 projections


def test_no_residual_removes_projections_like_the_old_residual_false():
    m = r18lab.create_model("resnet18", num_classes=10, transforms=["no_residual"])
    legacy = r18lab.create_model("resnet18", num_classes=10, residual=False)
    assert count_params(m) == count_params(legacy) == NO_RESIDUAL_R18 == 11_000_138
    assert list(m.state_dict()) == list(legacy.state_dict()) and not any("downsample" in k for k in m.state_dict())
    assert m.transforms == legacy.transforms == ["no_residual"]
    full = r18lab.create_model("resnet50", num_classes=10, width=0.25)
    proj = sum(p.numel() for n, p in full.named_parameters() if "downsample" in n)
    assert proj > 0 and count_params(r18lab.create_model("resnet50", num_classes=10, width=0.25,
                                                         transforms=["no_residual"])) == count_params(full) - proj


@pytest.mark.parametrize("block", ["layer1.0", "layer2.0"])  # identity and projection shortcut
def test_no_residual_forward_has_no_shortcut(block):
    residual, plain = tiny().eval(), tiny(transforms=["no_residual"]).eval()
    x = torch.randn(2, 4, 8, 8)  # width 1/16: both blocks take 4 channels
    for m in (residual, plain):
        b = m.get_submodule(block)
        nn.init.zeros_(b.bn2.weight), nn.init.zeros_(b.bn2.bias)  # F(x) = 0
    assert torch.equal(plain.get_submodule(block)(x), torch.zeros_like(plain.get_submodule(block)(x)))
    shortcut = residual.get_submodule(block)
    expected = torch.relu(x) if block == "layer1.0" else torch.relu(shortcut.downsample(x))
    assert torch.equal(shortcut(x), expected) and expected.abs().sum() > 0


def test_transforms_apply_in_order_before_the_heads():
    m = tiny(heads=["main", {"name": "fr", "dim": 8}],
             transforms=[{"name": "seams_project", "dim": 6, "tag": "a"}, {"name": "seams_project", "tag": "b"}])
    assert m._backbone.log == ["a", "b"] and m.num_features == 5  # the last one sets the width
    assert m.fc.in_features == 5 and m.heads["fr"].refiner[0].in_features == 5
    assert m.eval()(torch.randn(2, 3, 8, 8)).features.shape == (2, 5)
    assert m.transforms == [{"name": "seams_project", "dim": 6, "tag": "a"}, {"name": "seams_project", "tag": "b"}]


@pytest.mark.parametrize("kw,message", [
    (dict(name="seams_plain", transforms=["no_residual"]),
     "transform no_residual: backbone PlainNet has no residual shortcut to remove; drop no_residual from "
     "model.transforms"),
    (dict(transforms=["no_residual", "no_residual"]),
     "transform no_residual: backbone ResNet has no residual shortcut to remove; drop no_residual from "
     "model.transforms"),
    (dict(transforms=["nope"]), "unknown model transform 'nope'; choose one of: grouped, linearize, no_residual, seams_project"),
    (dict(transforms=[{"name": "no_residual", "x": 1}]), "unknown option 'x' for model transform 'no_residual'; "
                                                        "valid: none"),
    (dict(transforms="no_residual"), "transforms must be a list, got 'no_residual'"),
    (dict(residual="no"), "model option residual must be true or false, got 'no'"),
])
def test_transform_errors_are_one_line(kw, message):
    name = kw.pop("name", "resnet18")
    with pytest.raises(ConfigError) as e:
        r18lab.create_model(name, num_classes=3, width=0.0625, **kw)
    assert str(e.value) == message


# -- the gradient gate and torch.func ---------------------------------------------------------------------
@pytest.mark.parametrize("factor", [0.25, 0.3, 1e-7, -0.5])
def test_gate_forward_is_bit_identical_and_gradient_scaled_exactly(factor):
    torch.manual_seed(0)
    x = torch.cat([torch.tensor([-0.0, 0.0, 1e-40, -3e38, 7.0]), torch.randn(50)]).requires_grad_()
    y = gradient_gate(x, factor)
    assert torch.equal(y.detach().view(torch.int32), x.detach().view(torch.int32))
    g = torch.randn(55)
    y.backward(g)
    assert torch.equal(x.grad, g * factor) and not torch.equal(x.grad, g)
    assert gradient_gate(x, 1.0) is x and not gradient_gate(x, 0.0).requires_grad


def test_gate_scales_the_main_heads_gradient_into_the_backbone():
    torch.manual_seed(0)
    half = tiny(heads=["main", "fr"], gate=0.5)
    full = copy.deepcopy(half)
    full.gate = 1.0
    x = torch.randn(4, 3, 8, 8)
    for m in (half, full):
        m(x).logits["main"].sum().backward()
    torch.testing.assert_close(half.conv1.weight.grad, 0.5 * full.conv1.weight.grad, rtol=1e-6, atol=0)
    assert torch.equal(half.fc.weight.grad, full.fc.weight.grad)


@pytest.fixture
def fr_model():
    torch.manual_seed(0)
    m = tiny(num_classes=3, heads=["main", {"name": "fr", "dim": 8}], gate=0.5).double().eval()
    params = {k: v.detach().clone() for k, v in m.named_parameters()}
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
    return m, params, x, y


def _loss(out: ModelOutput, y):
    return F.cross_entropy(out.logits["fr"], y) + F.cross_entropy(out.logits["main"], y)


def test_model_output_is_a_pytree_for_vmap(fr_model):
    m, params, x, _ = fr_model
    out = vmap(lambda xi: functional_call(m, params, (xi[None],)))(x)
    assert isinstance(out, ModelOutput) and out.logits["fr"].shape == (4, 1, 3)
    torch.testing.assert_close(out.logits["fr"][:, 0], m(x).logits["fr"], rtol=1e-12, atol=1e-12)
    leaves, spec = torch.utils._pytree.tree_flatten(m(x))
    assert len(leaves) == 3 and isinstance(torch.utils._pytree.tree_unflatten(leaves, spec), ModelOutput)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # inside torch's jvp decompositions
def test_jvp_matches_finite_differences_and_the_gate(fr_model):
    m, params, x, _ = fr_model
    gen = torch.Generator().manual_seed(1)
    tangent = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}
    f = lambda p: functional_call(m, p, (x,))  # noqa: E731
    out, dout = jvp(f, (params,), (tangent,))
    assert isinstance(dout, ModelOutput)
    eps = 1e-6
    plus = f({k: v + eps * tangent[k] for k, v in params.items()})
    minus = f({k: v - eps * tangent[k] for k, v in params.items()})
    for fd, got in [((plus.logits["fr"] - minus.logits["fr"]) / (2 * eps), dout.logits["fr"]),
                    ((plus.features - minus.features) / (2 * eps), dout.features)]:
        torch.testing.assert_close(got, fd, rtol=1e-5, atol=1e-7)
    # main = fc(gate(features)): its tangent is the fc's own part plus 0.5 × the features' tangent through W
    w, dw, db = params["fc.weight"], tangent["fc.weight"], tangent["fc.bias"]
    expected = out.features @ dw.T + db + 0.5 * dout.features @ w.T
    torch.testing.assert_close(dout.logits["main"], expected, rtol=1e-10, atol=1e-12)


def test_grad_matches_backward(fr_model):
    m, params, x, y = fr_model
    got, out = grad(lambda p: (_loss(functional_call(m, p, (x,)), y), functional_call(m, p, (x,))),
                    has_aux=True)(params)
    assert isinstance(out, ModelOutput)
    m.zero_grad()
    _loss(m(x), y).backward()
    for k, p in m.named_parameters():
        torch.testing.assert_close(got[k], p.grad, rtol=1e-10, atol=1e-14)
    assert got["conv1.weight"].abs().sum() > 0


def test_vmap_per_sample_grads_match_a_loop(fr_model):
    m, params, x, y = fr_model

    def one(p, xi, yi):
        return _loss(functional_call(m, p, (xi[None],)), yi[None])

    per_sample = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    for i in range(len(y)):
        m.zero_grad()
        _loss(m(x[i:i + 1]), y[i:i + 1]).backward()
        for k, p in m.named_parameters():
            torch.testing.assert_close(per_sample[k][i], p.grad, rtol=1e-10, atol=1e-14)
