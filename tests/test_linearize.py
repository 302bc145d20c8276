"""The linearised network (model.transforms=[linearize], spec 002d §1, §3 "Exact (tests)") and the ResNet / init
options that paper 002d needs (zero_init_residual, activation, init=flax_lecun, one logit)."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import r18lab
from r18lab.cli import main
from r18lab.errors import ConfigError
from r18lab.models.classifier import create_model
from r18lab.models.init import TRUNCATED_NORMAL_STD
from r18lab.models.io import load_checkpoint, model_spec_of, save_model
from r18lab.models.linearize import Linearized, linearize
from r18lab.models.resnet import BasicBlock, Bottleneck
from r18lab.train.optim import param_groups

from helpers import tiny

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # inside torch's jvp

F64 = torch.float64


def images(n: int, size: int = 8, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def resnet(seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("resnet18", num_classes=kw.pop("num_classes", 1), width=0.0625, **kw)


def scramble_bn(model: nn.Module, seed: int = 5) -> nn.Module:
    """Non-trivial BN running statistics and affine parameters (so a wrong set of statistics shows)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model


def set_params(model: nn.Module, theta: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(theta[n])


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def direction(theta: dict[str, torch.Tensor], seed: int = 100) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in theta.items()}


# -- f_lin(θ0) = f(θ0) ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kw", [
    ("resnet18", dict(width=0.0625, zero_init_residual=True)),
    ("resnet18", dict(width=0.0625)),
    ("lenet", dict(image_size=8)),
    ("mlp", dict(image_size=8)),
])
def test_at_the_reference_the_linearisation_is_the_network_in_eval_mode_exactly(name, kw):
    torch.manual_seed(0)
    net = scramble_bn(create_model(name, num_classes=3, **kw))
    plain = copy.deepcopy(net).eval()
    lin = linearize(net)
    lin.train()  # the wrapper's mode does not matter: the network is always evaluated with frozen statistics
    x = images(4)
    got, want = lin(x), plain(x)
    assert torch.equal(got.logits["main"], want.logits["main"])
    assert torch.equal(got.features, want.features)
    if any(isinstance(m, nn.BatchNorm2d) for m in net.modules()):  # ≠ the network in train mode
        assert not torch.equal(got.logits["main"], copy.deepcopy(plain).train()(x).logits["main"])


# -- first order, exactly linear ----------------------------------------------------------------------------
@pytest.mark.parametrize("activation,t0", [("relu", 1e-6), ("gelu", 1e-4)])
def test_the_gap_to_the_network_is_second_order(activation, t0):
    net = resnet(activation=activation).double()
    plain = copy.deepcopy(net).eval()
    lin = linearize(net)
    theta0 = params_of(plain)
    d = direction(theta0)
    x = images(8, dtype=F64)

    def gap(t: float) -> float:
        theta = {n: theta0[n] + t * d[n] for n in theta0}
        set_params(lin, theta)
        with torch.no_grad():
            return (lin(x).logits["main"] - functional_call(plain, theta, (x,)).logits["main"]).abs().max().item()

    gaps = [gap(t0 / 2 ** k) for k in range(4)]
    assert gaps[-1] > 1e-13  # well above float64 rounding: the ratios measure the second-order term
    for a, b in zip(gaps, gaps[1:]):
        assert 3 < a / b < 5, gaps


def test_the_linearisation_is_exactly_linear_in_the_parameters():
    net = resnet().double()
    plain = copy.deepcopy(net).eval()
    lin = linearize(net)
    theta0 = params_of(plain)
    d = direction(theta0)
    x = images(8, dtype=F64)

    def outputs(t: float) -> tuple[torch.Tensor, torch.Tensor]:
        theta = {n: theta0[n] + t * d[n] for n in theta0}
        set_params(lin, theta)
        with torch.no_grad():
            return lin(x).logits["main"], functional_call(plain, theta, (x,)).logits["main"]

    (l0, f0), (l1, f1), (l2, f2) = outputs(0.0), outputs(0.5), outputs(1.0)  # far from θ0
    torch.testing.assert_close(l2 - l0, 2 * (l1 - l0), rtol=0, atol=1e-10)
    assert ((f2 - f0) - 2 * (f1 - f0)).abs().max() > 1e-3  # the network itself is far from linear there


def test_the_parameter_gradient_is_the_networks_jacobian_at_the_reference_everywhere():
    net = scramble_bn(resnet(num_classes=3)).double()
    plain = copy.deepcopy(net).eval()
    lin = linearize(net)
    theta0 = params_of(plain)
    d = direction(theta0)
    theta = {n: theta0[n] + 0.3 * d[n] for n in theta0}
    set_params(lin, theta)
    x = images(1, dtype=F64)
    names = [n for n, _ in plain.named_parameters()]
    assert any(n.endswith("bn1.weight") for n in names) and any(n.endswith("bn2.bias") for n in names)
    jac0 = torch.autograd.functional.jacobian(lambda *ps: functional_call(plain, dict(zip(names, ps)), (x,))
                                              .logits["main"][0], tuple(theta0[n] for n in names))
    moved = copy.deepcopy(plain)
    set_params(moved, theta)
    lin_params = dict(lin.named_parameters())
    for k in range(3):
        got = torch.autograd.grad(lin(x).logits["main"][0, k], [lin_params[n] for n in names])
        here = torch.autograd.grad(moved(x).logits["main"][0, k], list(moved.parameters()))
        for n, g, j, h in zip(names, got, jac0, here):
            torch.testing.assert_close(g, j[k], rtol=1e-9, atol=1e-12, msg=lambda m: f"{n}[{k}]: {m}")
        assert max((g - h).abs().max().item() for g, h in zip(got, here)) > 1e-3  # the network's J moved
        assert all(g.abs().sum() > 0 for n, g in zip(names, got) if "bn" in n)  # BN γ/β are trained too


def test_without_bias_the_output_is_the_change_from_the_reference():
    with_bias = resnet(transforms=["linearize"]).double()
    without = resnet(transforms=[{"name": "linearize", "bias": "without"}]).double()
    plain = copy.deepcopy(with_bias.net).eval()
    assert all(torch.equal(a, b) for a, b in zip(with_bias.parameters(), without.parameters()))
    x = images(4, dtype=F64)
    at0 = without(x)
    assert torch.count_nonzero(at0.logits["main"]) == 0 and torch.count_nonzero(at0.features) == 0
    f0 = plain(x).logits["main"]
    assert f0.abs().min() > 0
    theta0 = params_of(plain)
    d = direction(theta0)
    theta = {n: theta0[n] + 0.1 * d[n] for n in theta0}
    set_params(with_bias, theta), set_params(without, theta)
    with torch.no_grad():
        torch.testing.assert_close(without(x).logits["main"], with_bias(x).logits["main"] - f0, rtol=0, atol=1e-12)
        assert without(x).logits["main"].abs().min() > 1e-6


def test_batchnorm_is_frozen_during_training():
    lin = linearize(scramble_bn(resnet()).double())
    lin.train()
    assert lin.training and not lin.net.training
    assert not any(m.training for m in lin.modules() if isinstance(m, nn.BatchNorm2d))
    x = images(8, dtype=F64)
    alone, batch = lin(x[:1]).logits["main"], lin(x).logits["main"][:1]
    torch.testing.assert_close(alone, batch, rtol=0, atol=1e-12)
    plain = copy.deepcopy(lin.net).train()  # the network in train mode depends on the batch
    assert (plain(x[:1].repeat(2, 1, 1, 1)).logits["main"][:1] - plain(x).logits["main"][:1]).abs().max() > 1e-3

    buffers = {n: b.clone() for n, b in lin.named_buffers()}
    assert any("running_mean" in n for n in buffers) and any(n.startswith("reference.") for n in buffers)
    before = params_of(lin)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    y = torch.tensor([0.0, 1.0] * 4, dtype=F64)
    for _ in range(3):
        lin.train()
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(lin(x).logits["main"][:, 0], y).backward()
        opt.step()
    assert all(torch.equal(b, buffers[n]) for n, b in lin.named_buffers())
    assert any(not torch.equal(p, before[n]) for n, p in lin.named_parameters())


# -- reference = checkpoint -------------------------------------------------------------------------------
SPEC = {"name": "resnet18", "num_classes": 1, "width": 0.0625}


@pytest.fixture
def trained_file(tmp_path):
    """A 'trained' network (parameters moved, BN statistics changed) saved with its spec."""
    net = scramble_bn(resnet(seed=7))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "ref.safetensors"
    save_model(net, path, SPEC)
    return net.eval(), path


def test_reference_checkpoint_sets_theta0_and_the_starting_point(trained_file):
    net, path = trained_file
    lin = resnet(seed=1, transforms=[{"name": "linearize", "reference": str(path)}])
    state = net.state_dict()
    for n, p in lin.net.named_parameters():
        assert torch.equal(p, state[n]), n
    ref_params, ref_bn = lin.reference.params(), lin.reference.buffers_at_reference()
    assert all(torch.equal(v, state[n]) for n, v in ref_params.items()) and len(ref_params) == len(list(net.parameters()))
    assert all(torch.equal(v, state[n]) for n, v in ref_bn.items())
    x = images(4)
    assert torch.equal(lin(x).logits["main"], net(x).logits["main"])


def test_reference_bn_init_uses_a_fresh_networks_statistics(trained_file):
    net, path = trained_file
    lin = resnet(seed=1, transforms=[{"name": "linearize", "reference": str(path), "reference_bn": "init"}])
    fresh = resnet(seed=3)  # BN statistics of a freshly built network do not depend on the seed
    fresh_bn = dict(fresh.named_buffers())
    ref_bn = lin.reference.buffers_at_reference()
    assert set(ref_bn) == set(fresh_bn)
    assert all(torch.equal(v, fresh_bn[n]) for n, v in ref_bn.items())
    assert not torch.equal(ref_bn["bn1.running_mean"], dict(net.named_buffers())["bn1.running_mean"])
    assert all(torch.equal(p, net.state_dict()[n]) for n, p in lin.net.named_parameters())  # θ0 still the file's
    reset = copy.deepcopy(net)
    reset.load_state_dict({**net.state_dict(), **fresh_bn})
    x = images(4)
    torch.testing.assert_close(lin(x).logits["main"], reset.eval()(x).logits["main"], rtol=0, atol=0)


def test_reference_of_another_architecture_is_one_line(tmp_path, capsys):
    torch.manual_seed(0)
    wide = create_model("resnet18", num_classes=4, width=0.125)
    path = tmp_path / "wide.safetensors"
    save_model(wide, path, {**SPEC, "num_classes": 4, "width": 0.125})
    with pytest.raises(ConfigError) as e:
        create_model("resnet18", num_classes=4, width=0.0625, transforms=[{"name": "linearize", "reference": str(path)}])
    assert "does not fit this architecture" in str(e.value) and "\n" not in str(e.value)
    capsys.readouterr()
    rc = main(["train", *tiny(f"model.transforms=[{{name: linearize, reference: {path}}}]"),
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2  # a reference that does not fit is a configuration mistake (ConfigError)
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: transform linearize: reference checkpoint ")
    assert "Traceback" not in err
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(ConfigError, match="does not exist"):
        create_model("resnet18", num_classes=4, width=0.0625, transforms=[{"name": "linearize", "reference": str(missing)}])


def test_saved_weights_reload_identically_without_the_reference_file(trained_file, tmp_path):
    _, ref = trained_file
    spec = {**SPEC, "transforms": [{"name": "linearize", "reference": str(ref)}]}
    lin = r18lab.models.io.build_from_spec(spec)
    x, y = images(8), torch.tensor([0.0, 1.0] * 4)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    for _ in range(2):
        lin.train()
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(lin(x).logits["main"][:, 0], y).backward()
        opt.step()
    lin.eval()
    path = tmp_path / "model.safetensors"
    save_model(lin, path, spec)
    theta0 = {n: v.clone() for n, v in lin.reference.params().items()}
    ref.unlink()
    loaded = load_checkpoint(path)
    assert model_spec_of(path)["transforms"] == spec["transforms"]  # the file records the reference it was taken at
    assert isinstance(loaded.model, Linearized)
    assert all(torch.equal(v, theta0[n]) for n, v in loaded.model.reference.params().items())
    assert torch.equal(loaded.model.eval()(x).logits["main"], lin(x).logits["main"])
    assert not torch.equal(lin(x).logits["main"], functional_call(lin.net, theta0, (x,)).logits["main"])  # trained
    with pytest.raises(ConfigError, match="does not exist"):  # building it as trained needs the reference file
        r18lab.models.io.build_from_spec(spec)


def test_the_wrapper_keeps_the_networks_names_and_shares_its_modules():
    lin = resnet(transforms=["linearize"])
    plain = resnet()
    assert [n for n, _ in lin.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert all(a is b for a, b in zip(lin.parameters(), lin.net.parameters()))
    c = copy.deepcopy(lin)
    assert c.net.conv1 is c.conv1 and c.conv1 is not lin.conv1
    assert all(a is b for a, b in zip(c.parameters(), c.net.parameters()))


# -- ordering and options ---------------------------------------------------------------------------------
def test_transform_order_and_options():
    with pytest.raises(ConfigError, match=r"^model transform linearize acts on the whole model, so it must come after"):
        resnet(transforms=["linearize", "no_residual"])
    built = resnet(transforms=["no_residual", "linearize"])
    assert isinstance(built, Linearized) and all(not b.residual for b in built.modules() if isinstance(b, BasicBlock))
    assert built.transforms == ["no_residual", "linearize"]
    with pytest.raises(ConfigError, match="applied twice"):
        resnet(transforms=["linearize", "linearize"])
    with pytest.raises(ConfigError) as e:
        resnet(transforms=[{"name": "linearize", "biass": "with"}])
    assert str(e.value) == "unknown option 'biass' for model transform 'linearize'; valid: reference, bias, reference_bn"
    for bad in ({"bias": "yes"}, {"reference_bn": "running"}, {"reference": ""}):
        with pytest.raises(ConfigError):
            resnet(transforms=[{"name": "linearize", **bad}])


# -- end to end -------------------------------------------------------------------------------------------
BINARY = ["data.task={name: binary, positive: [0, 1]}", "model.num_classes=1", "objective=[bce]"]
FULL_BATCH_GD = ["train.batch_size=128", "optim.momentum=0", "data.augment={crop: null, flip: false}"]


def test_linearised_binary_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "lin"
    args = tiny(*BINARY, *FULL_BATCH_GD, "model.transforms=[linearize]", "train.epochs=3")
    assert main(["train", *args, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {"eval/main/acc", "eval/main/loss"} <= set(summary["final"]) and summary["num_classes"] == 2
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2]  # full-batch GD on a convex loss: decreasing
    loaded = load_checkpoint(out / "model.safetensors")
    assert isinstance(loaded.model, Linearized) and loaded.model.num_classes == 1
    plain = create_model("resnet18", num_classes=1, width=0.0625)
    layers = lambda m: [g["layer"] for g in param_groups(m, 5e-4, True)]  # noqa: E731
    assert layers(loaded.model) == layers(plain) and "conv1" in layers(plain)
    net_params = dict(loaded.model.net.named_parameters())
    assert any(not torch.equal(v, net_params[n]) for n, v in loaded.model.reference.params().items())  # trained


def test_linearised_run_from_a_reference_reloads_after_the_reference_is_deleted(tmp_path, capsys):
    torch.manual_seed(0)
    ref = tmp_path / "ref.safetensors"
    save_model(scramble_bn(create_model("resnet18", num_classes=4, width=0.0625)), ref,
               {**SPEC, "num_classes": 4})
    out = tmp_path / "lin"
    assert main(["train", *tiny(f"model.transforms=[{{name: linearize, reference: {ref}}}]", "train.epochs=1"),
                 "--out", str(out)]) == 0
    final = json.loads((out / "summary.json").read_text())["final"]
    ref.unlink()
    loaded = load_checkpoint(out / "model.safetensors")
    from r18lab.data.loading import load
    from r18lab.models.io import Normalizer
    from r18lab.train.engine import evaluate
    test = load("synthetic", split="test", num_classes=4, image_size=8, n=128)
    x = torch.from_numpy(test.images).permute(0, 3, 1, 2).contiguous()
    res = evaluate(loaded.model, x, torch.from_numpy(test.labels), loaded.preprocessing.normalizer())
    assert res["eval/main/acc"] == final["eval/main/acc"]
    assert math.isclose(res["eval/main/loss"], final["eval/main/loss"], rel_tol=1e-6)


def test_the_gate_still_blocks_the_main_heads_gradient_under_the_linearisation():
    def grads(gate):
        lin = resnet(num_classes=3, heads=["main", "fr"], transforms=["linearize"], **({} if gate is None else
                                                                                       {"gate": gate}))
        theta0 = params_of(lin)
        d = direction(theta0)
        set_params(lin, {n: theta0[n] + 0.1 * d[n] for n in theta0})
        lin.train()
        out = lin(images(4))
        y = torch.tensor([0, 1, 2, 0])
        main_g = torch.autograd.grad(F.cross_entropy(out.logits["main"], y), list(lin.parameters()),
                                     allow_unused=True, retain_graph=True)
        fr_g = torch.autograd.grad(F.cross_entropy(out.logits["fr"], y), list(lin.parameters()), allow_unused=True)
        names = [n for n, _ in lin.named_parameters()]
        return names, main_g, fr_g

    names, main_g, fr_g = grads(None)  # fr sets gate 0
    backbone = [i for i, n in enumerate(names) if not n.startswith(("fc.", "heads."))]
    assert len(backbone) > 10
    assert all(main_g[i] is None or torch.count_nonzero(main_g[i]) == 0 for i in backbone)
    assert all(main_g[i] is not None and main_g[i].abs().sum() > 0 for i, n in enumerate(names) if n.startswith("fc."))
    assert sum(fr_g[i].abs().sum() for i in backbone if fr_g[i] is not None) > 0
    _, half, _ = grads(0.5)
    assert sum(half[i].abs().sum() for i in backbone if half[i] is not None) > 0


# -- the network options of paper 002d ---------------------------------------------------------------------
def test_resnet18_with_one_output_has_the_spec_parameter_count():
    assert 11_168_832 + 513 == 11_169_345
    assert sum(p.numel() for p in create_model("resnet18", num_classes=1).parameters()) == 11_169_345


@pytest.mark.parametrize("name,block,last", [("resnet18", BasicBlock, "bn2"), ("resnet50", Bottleneck, "bn3")])
def test_zero_init_residual_silences_every_residual_branch(name, block, last):
    torch.manual_seed(0)
    zero = create_model(name, num_classes=3, width=0.0625, zero_init_residual=True)
    default = create_model(name, num_classes=3, width=0.0625)
    blocks = [m for m in zero.modules() if isinstance(m, block)]
    assert len(blocks) == (8 if name == "resnet18" else 16)
    assert all(torch.count_nonzero(getattr(b, last).weight) == 0 for b in blocks)
    assert all(torch.all(getattr(b, last).weight == 1) for b in default.modules() if isinstance(b, block))
    zero.eval()
    for b in (zero.layer1[0], zero.layer2[0]):  # identity and projection shortcut
        x = torch.randn(2, b.conv1.in_channels, 8, 8)
        shortcut = x if b.downsample is None else b.downsample(x)
        assert torch.equal(b(x), torch.relu(shortcut))
    with pytest.raises(ConfigError, match="zero_init_residual must be true or false"):
        create_model(name, num_classes=3, width=0.0625, zero_init_residual="yes")


def test_gelu_replaces_every_relu():
    def count(m, kind):
        return sum(isinstance(mod, kind) for mod in m.modules())

    relu, gelu = resnet(), resnet(activation="gelu")
    assert count(relu, nn.ReLU) == 9 and count(relu, nn.GELU) == 0  # stem + one per block
    assert count(gelu, nn.GELU) == count(relu, nn.ReLU) and count(gelu, nn.ReLU) == 0
    x = images(2)
    assert not torch.equal(relu.eval()(x).logits["main"], gelu.eval()(x).logits["main"])


def test_flax_lecun_init():
    torch.manual_seed(0)
    lenet = create_model("lenet", num_classes=1, init="flax_lecun")
    layers = [m for m in lenet.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 5 and all(torch.count_nonzero(m.bias) == 0 for m in layers)
    resnet_ = create_model("resnet18", num_classes=1, width=0.25, init="flax_lecun", zero_init_residual=True)
    assert torch.count_nonzero(resnet_.fc.bias) == 0 and torch.count_nonzero(resnet_.layer1[0].bn2.weight) == 0
    assert torch.all(resnet_.bn1.weight == 1)
    for w in (lenet.fc1.weight, resnet_.layer4[1].conv2.weight):  # fan_in 1024, 1152; 123k and 147k weights
        bound = math.sqrt(1 / w[0].numel())
        assert abs(w.std().item() / bound - 1) < 0.05
        assert w.abs().max().item() <= 2 * bound / TRUNCATED_NORMAL_STD
        assert w.abs().max().item() > 1.9 * bound / TRUNCATED_NORMAL_STD  # truncated at 2σ, not narrower
    torch.manual_seed(0)
    default = create_model("lenet", num_classes=1)
    assert abs(default.fc1.weight.std().item() / math.sqrt(1 / 1024) - 1) > 0.2  # PyTorch's default differs
    with pytest.raises(ConfigError, match="^unknown model.init 'lecun'; choose one of: default, flax_lecun$"):
        create_model("lenet", num_classes=1, init="lecun")
