"""Grad-CAM (closed form on a hand model), M1 agreement, I-FGSM, ε calibration and adversarial transfer (spec 002c
§2 M1/M2, §3)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from r18lab.analysis.attack import calibrate_eps, fooling_mask, ifgsm, transfer_fooling
from r18lab.analysis.gradcam import cam_agreement, gradcam
from r18lab.analysis.nets import Net
from r18lab.errors import ConfigError
from r18lab.models.classifier import ModelOutput, create_model
from r18lab.models.io import Preprocessing

CLASSES = ("a", "b", "c", "d")
PREP = Preprocessing.of((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (3, 8, 8), CLASSES)


class FeatNet(nn.Module):
    """A conv layer `feat` → global average pool → Linear: ∂y_c/∂A^k_ij = w_ck/(hw), so Grad-CAM has a closed form."""

    def __init__(self, channels: int = 3, classes: int = 4, stride: int = 1) -> None:
        super().__init__()
        self.feat = nn.Conv2d(3, channels, 3, stride, 1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        pooled = self.feat(x).mean((2, 3))
        return ModelOutput({"main": self.fc(pooled)}, pooled)


def tiny_net(seed: int, name: str = "") -> Net:
    torch.manual_seed(seed)
    return Net(create_model("resnet18", num_classes=4, width=0.0625), PREP, name=name)


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8×8 images whose class sets the mean colour, plus noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    base = torch.tensor([[0.8, 0.2, 0.2], [0.2, 0.8, 0.2], [0.2, 0.2, 0.8], [0.7, 0.7, 0.2]])[y]
    x = base[:, :, None, None] + 0.2 * torch.randn(n, 3, 8, 8, generator=g)
    return x.clamp(0, 1), y


def train(net: Net, steps: int = 30, seed: int = 0) -> Net:
    x, y = synthetic(256, seed)
    opt = torch.optim.Adam(net.model.parameters(), lr=1e-2)
    net.model.train()
    for step in range(steps):
        i = torch.arange(step * 64, step * 64 + 64) % len(x)
        loss = F.cross_entropy(net.logits(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.model.eval()
    net.model.zero_grad(set_to_none=True)
    return net


@pytest.fixture(scope="module")
def trained() -> Net:
    return train(tiny_net(0, "teacher"))


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return synthetic(200, 1)


def no_grads(net: Net) -> bool:
    return all(p.grad is None for p in net.model.parameters())


# -- Grad-CAM ---------------------------------------------------------------------------------------------------
def test_gradcam_closed_form_on_a_linear_head():
    torch.manual_seed(0)
    net = Net(FeatNet(), Preprocessing.identity((3, 8, 8)))
    x = torch.rand(5, 3, 8, 8)
    target = torch.tensor([0, 1, 2, 3, 1])
    cam = gradcam(net, x, target, layer="feat")
    with torch.no_grad():
        a = net.model.feat(x)  # N×K×8×8
        w = net.model.fc.weight[target]  # N×K
        expected = F.relu((w[:, :, None, None] * a).sum(1)) / (8 * 8)
    assert cam.shape == (5, 8, 8)
    torch.testing.assert_close(cam, expected, rtol=1e-5, atol=1e-7)
    assert no_grads(net)
    assert all(p.requires_grad for p in net.model.parameters())


def test_gradcam_upsamples_to_the_input_size():
    torch.manual_seed(1)
    net = Net(FeatNet(stride=2), Preprocessing.identity((3, 8, 8)))
    x = torch.rand(3, 3, 8, 8)
    cam = gradcam(net, x, 2, layer="feat", batch_size=2)
    with torch.no_grad():
        a = net.model.feat(x)  # 4×4 maps
        small = F.relu((net.model.fc.weight[2][None, :, None, None] * a).sum(1, keepdim=True)) / 16
        expected = F.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    assert cam.shape == (3, 8, 8)
    torch.testing.assert_close(cam, expected, rtol=1e-5, atol=1e-7)


def test_gradcam_on_a_resnet_leaves_the_model_untouched():
    net = tiny_net(2)
    x, y = synthetic(6, 3)
    net.model.train()  # a caller's mode is restored, BatchNorm statistics are not updated
    before = {k: v.clone() for k, v in net.model.state_dict().items()}
    cam = gradcam(net, x, y, layer="layer3")
    assert cam.shape == (6, 8, 8) and (cam >= 0).all()
    assert net.model.training
    assert all(torch.equal(before[k], v) for k, v in net.model.state_dict().items())
    assert no_grads(net)
    net.model.eval()
    assert gradcam(net, x, y).shape == (6, 8, 8)  # default layer4 (1×1 at 8×8 input), upsampled
    assert gradcam(net, x, y, layer="layer4.1").shape == (6, 8, 8)


def test_gradcam_unknown_layer_lists_the_choices():
    with pytest.raises(ConfigError, match="layer4"):
        gradcam(tiny_net(0), torch.rand(2, 3, 8, 8), 0, layer="layer9")


# -- M1 agreement -----------------------------------------------------------------------------------------------
def test_cam_agreement_identical_maps_tie_at_half():
    t, a = torch.rand(10, 4, 4), torch.rand(10, 4, 4)
    out = cam_agreement(t, a, a.clone())
    assert out["percent"] == 50.0 and torch.equal(out["indicator"], torch.full((10,), 0.5, dtype=torch.float64))


def test_cam_agreement_hand_example():
    t = torch.tensor([[1.0, 0, 0, 0]] * 4).view(4, 2, 2)
    a = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]]).view(4, 2, 2)
    b = torch.tensor([[1.0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [1, 1, 1, 0]]).view(4, 2, 2)
    out = cam_agreement(t, a, b)
    torch.testing.assert_close(out["cos_a"], torch.tensor([1.0, 0.0, 0.0, 1 / math.sqrt(2)], dtype=torch.float64))
    torch.testing.assert_close(out["cos_b"], torch.tensor([1 / math.sqrt(2), 1.0, 0.0, 1 / math.sqrt(3)],
                                                          dtype=torch.float64))
    assert out["indicator"].tolist() == [1.0, 0.0, 0.5, 1.0]  # image 3: a zero map has cosine 0, a tie
    assert out["percent"] == 62.5 and out["n"] == 4


# -- I-FGSM -----------------------------------------------------------------------------------------------------
def test_ifgsm_stays_in_the_eps_ball_and_the_pixel_range(trained, data):
    x, y = data
    eps = 0.03
    adv = ifgsm(trained, x, y, eps, batch_size=64)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert (adv - x).abs().max() <= eps + 1e-7
    assert adv.min() >= 0 and adv.max() <= 1
    assert not torch.equal(adv, x)
    assert no_grads(trained) and not trained.model.training


def test_ifgsm_eps_zero_is_the_identity(trained, data):
    x, y = data
    assert torch.equal(ifgsm(trained, x, y, 0.0), x)


def test_ifgsm_raises_the_loss(trained, data):
    x, y = data
    with torch.no_grad():
        clean = F.cross_entropy(trained.logits(x), y)
        losses = [float(F.cross_entropy(trained.logits(ifgsm(trained, x, y, 0.05, steps=k)), y)) for k in range(6)]
    assert losses[0] == pytest.approx(float(clean))
    assert losses[-1] > float(clean)
    assert all(b >= a - 1e-6 for a, b in zip(losses, losses[1:]))  # monotone over the 5 steps on this batch


def test_ifgsm_default_step_is_a_quarter_of_eps(trained, data):
    x, y = data
    default = ifgsm(trained, x[:32], y[:32], 0.04)
    assert torch.equal(default, ifgsm(trained, x[:32], y[:32], 0.04, step_size=0.01))
    assert not torch.equal(default, ifgsm(trained, x[:32], y[:32], 0.04, step_size=0.04))


def test_fooling_mask_both_readings(trained, data):
    x, y = data
    adv = ifgsm(trained, x, y, 0.1)
    changed, wrong = fooling_mask(trained, x, adv, y)
    assert changed.dtype == torch.bool and changed.shape == (len(x),)
    torch.testing.assert_close(changed, trained.predict(adv) != trained.predict(x))
    torch.testing.assert_close(wrong, trained.predict(adv) != y)
    assert fooling_mask(trained, x, adv)[1] is None


# -- ε calibration ----------------------------------------------------------------------------------------------
def test_calibrate_eps_reaches_the_target(trained, data):
    x, y = data
    out = calibrate_eps(trained, x, y, target=0.5, hi=0.05)
    assert out["reached"] and abs(out["rate"] - 0.5) <= 0.01
    assert 0 < out["eps"] <= out["hi"]
    assert (out["eps"], out["rate"]) in out["evaluations"]


def test_calibrate_eps_flags_an_unreachable_target():
    model = FeatNet()
    with torch.no_grad():  # constant logits: no ε can change a prediction
        for p in model.parameters():
            p.zero_()
        model.fc.bias[0] = 1.0
    x, y = synthetic(16, 4)
    out = calibrate_eps(Net(model, PREP), x, y, target=0.85, iters=3)
    assert not out["reached"] and out["rate"] == 0.0 and out["eps"] == 1.0 and out["hi"] == 1.0


# -- transfer ---------------------------------------------------------------------------------------------------
def test_transfer_fooling_teacher_against_itself_is_total(trained, data):
    x, y = data
    other = tiny_net(5, "other")
    out = transfer_fooling(trained, [trained, other], x, y, eps=0.05)
    assert out["kept"] == int(out["kept_mask"].sum()) > 0
    assert out["source_fooling_pct"] == pytest.approx(100 * out["kept"] / len(x))
    me = out["students"]["teacher"]
    assert me["fooling_pct"] == 100.0 and me["kept"] == out["kept"] and me["indicator"].all()
    assert out["students"]["other"]["indicator"].shape == (out["kept"],)
    assert out["teacher_fooling_pct"] == 100.0
    control = transfer_fooling(trained, [other], x, y, eps=0.05, source=other)  # Fig. 3c: attack a foreign net
    assert control["source"] == "other" and control["students"]["other"]["fooling_pct"] == 100.0
