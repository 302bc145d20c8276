"""Teacher–student similarity measures: CKA, taps, agreement, invariance transforms, decision-boundary planes,
intervals (spec 002c §2 M3–M5, M7, M10–M12; §3 exact checks)."""
import math

import pytest
import torch
from torch import nn

from r18lab.analysis import similarity as S
from r18lab.analysis.nets import Net
from r18lab.errors import ConfigError
from r18lab.models.classifier import ModelOutput, create_model
from r18lab.models.io import Preprocessing

CLASSES = ("a", "b", "c", "d")


def tiny_net(seed: int = 0, classes=CLASSES) -> Net:
    torch.manual_seed(seed)
    model = create_model("resnet18", num_classes=len(classes), width=0.0625)
    return Net(model, Preprocessing.of((0.5, 0.4, 0.3), (0.25, 0.2, 0.3), (3, 8, 8), classes), name=f"net{seed}")


def images(n: int = 12, seed: int = 0, size: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- CKA ----------------------------------------------------------------------------------------------------
def test_cka_of_a_representation_with_itself_is_one():
    x = torch.randn(30, 7, generator=gen())
    assert S.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert S.linear_cka(x, x, debiased=True) == pytest.approx(1.0, abs=1e-12)


def test_cka_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    g = gen(1)
    x = torch.randn(25, 6, generator=g, dtype=torch.float64)
    y = torch.randn(25, 4, generator=g, dtype=torch.float64) + 3.0
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    base = S.linear_cka(x, y)
    assert S.linear_cka(x @ q, y) == pytest.approx(base, abs=1e-10)
    assert S.linear_cka(7.5 * x, y) == pytest.approx(base, abs=1e-10)
    assert S.linear_cka(x @ q, 0.1 * y, debiased=True) == pytest.approx(S.linear_cka(x, y, True), abs=1e-10)
    anisotropic = torch.diag(torch.tensor([1.0, 1.0, 1.0, 5.0, 5.0, 20.0], dtype=torch.float64))
    assert abs(S.linear_cka(x @ anisotropic, y) - base) > 1e-3  # not invariant to non-isotropic scaling


def test_cka_hand_example():
    # X = [[1,0],[-1,0],[0,1],[0,-1]], Y = [[1,0],[-1,0],[0,0],[0,0]] (both column-centred):
    # XᵀX = diag(2, 2) → ‖·‖_F = 2√2; YᵀY = diag(2, 0) → 2; YᵀX = diag(2, 0) → ‖·‖²_F = 4; CKA = 4/(2√2·2) = 1/√2.
    x = torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]])
    y = torch.tensor([[1.0, 0], [-1, 0], [0, 0], [0, 0]])
    assert S.linear_cka(x, y) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert S.linear_cka(x + 5.0, y - 2.0) == pytest.approx(1 / math.sqrt(2), abs=1e-12)  # columns are centred first


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("p,q", [(3, 5), (40, 70), (5, 90)])
def test_gram_and_feature_forms_agree(debiased, p, q):
    g = gen(2)
    x = torch.randn(20, p, generator=g)
    y = x[:, :1].repeat(1, q) * torch.randn(1, q, generator=g) + torch.randn(20, q, generator=g)
    gram = S.linear_cka(x, y, debiased, form="gram")
    feats = S.linear_cka(x, y, debiased, form="features")
    assert gram == pytest.approx(feats, abs=1e-10)
    assert S.linear_cka(x, y, debiased) == pytest.approx(gram, abs=1e-10)


def test_debiased_cka_removes_the_high_dimensional_bias():
    g = gen(3)
    x, y = torch.randn(20, 500, generator=g), torch.randn(20, 500, generator=g)  # independent
    assert S.linear_cka(x, y) > 0.8  # biased CKA of unrelated wide features with few samples is large
    assert abs(S.linear_cka(x, y, debiased=True)) < 0.2


def test_cka_flattens_trailing_dims_and_checks_inputs():
    x = torch.randn(10, 2, 3, 3, generator=gen(4))
    y = torch.randn(10, 5, generator=gen(5))
    assert S.linear_cka(x, y) == pytest.approx(S.linear_cka(x.reshape(10, -1), y), abs=1e-12)
    with pytest.raises(ConfigError, match="same images"):
        S.linear_cka(x, y[:9])
    with pytest.raises(ConfigError, match="n ≥ 4"):
        S.linear_cka(x[:3], y[:3], debiased=True)
    with pytest.raises(ConfigError, match="form"):
        S.linear_cka(x, y, form="fast")
    assert math.isnan(S.linear_cka(torch.ones(10, 4), y))  # a constant representation has no CKA


# -- layer taps ---------------------------------------------------------------------------------------------
def test_layer_taps_default_shapes_and_batching():
    net, x = tiny_net(), images(10)
    taps = S.layer_taps(net, x)
    assert tuple(taps) == S.default_taps(net) == S.DEFAULT_TAPS  # seven taps (spec K7); the stem tap is `relu`
    assert {k: v.shape[1] for k, v in taps.items()} == {"relu": 4 * 64, "layer1": 4 * 64, "layer2": 8 * 16,
                                                        "layer3": 16 * 4, "layer4": 32, "features": 32, "logits": 4}
    assert all(v.shape[0] == 10 and v.dtype == torch.float32 for v in taps.values())
    small = S.layer_taps(net, x, batch_size=3)
    assert all(torch.allclose(small[k], taps[k], atol=1e-6) for k in taps)
    with torch.no_grad():
        assert torch.allclose(taps["logits"], net.logits(x), atol=1e-6)
        assert torch.allclose(taps["features"], net.output(x).features, atol=1e-6)
        assert torch.allclose(taps["layer4"], taps["features"])  # a 1×1 stage output equals its average pool


def test_layer_taps_accept_any_module_name():
    taps = S.layer_taps(tiny_net(), images(4), ["layer2.1", "layer1.0.conv1", "fc"])
    assert [v.shape[1] for v in taps.values()] == [8 * 16, 4 * 64, 4]


def test_unknown_tap_lists_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        S.layer_taps(tiny_net(), images(4), ["layer5", "logits"])
    msg = str(err.value)
    assert "layer5" in msg and "layer1.0" in msg and "layer4" in msg and "features" in msg and "logits" in msg
    assert "layer1.0.conv1" not in msg  # the list stays readable


def test_a_module_that_runs_twice_is_refused():
    with pytest.raises(ConfigError, match="2 times"):
        S.layer_taps(tiny_net(), images(4), ["layer1.0.relu"])


def test_cka_matrix_of_a_net_with_itself_has_a_unit_diagonal():
    taps = S.layer_taps(tiny_net(), images(12))
    names_a, names_b, m = S.cka_matrix(taps, taps)
    assert names_a == names_b == list(S.DEFAULT_TAPS) and m.shape == (7, 7)
    assert torch.allclose(m.diagonal(), torch.ones(7, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(m, m.T, atol=1e-10)
    _, _, d = S.cka_matrix(taps, taps, debiased=True)
    assert torch.allclose(d.diagonal(), torch.ones(7, dtype=torch.float64), atol=1e-10)
    other = S.layer_taps(tiny_net(1), images(12), ["layer2", "logits"])
    na, nb, cross = S.cka_matrix(taps, other)
    assert nb == ["layer2", "logits"] and cross.shape == (7, 2)
    assert cross[2, 0] == pytest.approx(S.linear_cka(taps["layer2"], other["layer2"]), abs=1e-12)


# -- agreement ----------------------------------------------------------------------------------------------
def test_agreement_hand_example():
    a, b, y = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([0, 1, 3, 3, 1]), torch.tensor([0, 2, 2, 1, 2])
    r = S.agreement(a, b, y)
    assert r["agreement"] == pytest.approx(60.0)  # positions 0, 1, 3
    assert (r["both_right"], r["one_right"], r["both_wrong"]) == pytest.approx((20.0, 20.0, 60.0))
    assert r["same_error"] == pytest.approx(40.0)  # positions 1 and 3: both wrong, same label
    assert r["error_agreement"] == pytest.approx(200 / 3)  # 2 of the 3 both-wrong images
    assert r["n"] == 5


def test_identical_predictions_agree_fully_and_the_breakdown_sums_to_100():
    p = torch.randint(0, 4, (50,), generator=gen())
    y = torch.randint(0, 4, (50,), generator=gen(1))
    r = S.agreement(p, p.numpy(), y)
    assert r["agreement"] == 100.0
    assert r["both_right"] + r["both_wrong"] + r["one_right"] == pytest.approx(100.0)
    assert r["one_right"] == 0 and r["same_error"] == r["both_wrong"] and r["error_agreement"] == 100.0
    with pytest.raises(ConfigError):
        S.agreement(p, p[:-1])


def test_consensus_of_a_net_with_itself_and_class_mismatch():
    net = tiny_net()
    assert S.consensus(net, net, images(9)) == 100.0
    with pytest.raises(ConfigError, match="classes"):
        S.consensus(net, tiny_net(1, ("w", "x", "y", "z")), images(9))


# -- invariance transforms ----------------------------------------------------------------------------------
def test_identity_invariance_is_100():
    assert S.invariance_agreement(tiny_net(), images(10), S.identity, S.identity, gen(), batch_size=4) == 100.0


def test_zero_strength_transforms_are_identities():
    x = images(6)
    assert torch.equal(S.color_transform(0.0)(x, gen()), x)
    assert torch.allclose(S.color_transform(0.0, hue=0.0)(x, gen()), x, atol=1e-6)  # RGB→HSV→RGB round trip
    assert torch.allclose(S.crop_transform(1.0, aspect=(1.0, 1.0))(x, gen()), x, atol=1e-6)
    assert torch.allclose(S.crop_transform(1.0)(x, gen()), x, atol=1e-6)  # area 1 only fits aspect 1
    assert torch.equal(S.shift_transform(0)(x, gen()), x)


@pytest.mark.parametrize("make", [lambda: S.color_transform(0.4, hue=0.1), lambda: S.crop_transform(0.3),
                                  lambda: S.shift_transform(2)])
def test_transforms_keep_shape_and_range_and_follow_the_seed(make):
    t, x = make(), images(8, size=16)
    a, b, c = t(x, gen(0)), t(x, gen(0)), t(x, gen(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)


def test_colour_on_a_grey_image_is_brightness_only():
    # A uniform grey image is unchanged by contrast (its mean), saturation (its luma) and hue; brightness scales it.
    x = torch.full((40, 3, 4, 4), 0.5)
    out = S.color_transform(0.4, hue=0.2)(x, gen())
    ratio = out[:, 0, 0, 0] / 0.5
    assert torch.allclose(out, out[:, :1, :1, :1].expand_as(out), atol=1e-5)
    assert ratio.min() >= 0.6 - 1e-5 and ratio.max() <= 1.4 + 1e-5 and ratio.std() > 0.1
    grey = S.color_transform(0.4, hue=0.2)(x[:, :1], gen())  # one channel: saturation and hue are no-ops
    assert grey.shape == (40, 1, 4, 4)


def test_hue_shift_by_a_third_turns_red_into_green():
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    from r18lab.data.color import adjust_hue
    green = adjust_hue(red, torch.tensor([1 / 3]))
    assert torch.allclose(green, torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1).expand_as(red), atol=1e-5)


def test_crop_zooms_by_the_side_of_its_area():
    # A horizontal ramp holding each pixel centre's coordinate: bilinear sampling returns the sample position, so
    # adjacent output columns differ by (crop width)/W = √area/W for a square crop (borders excluded).
    w = 16
    ramp = ((torch.arange(w) + 0.5) / w).view(1, 1, 1, w).expand(5, 3, w, w).contiguous()
    out = S.crop_transform(0.25, aspect=(1.0, 1.0))(ramp, gen())
    steps = out[..., 2:-1] - out[..., 1:-2]
    assert torch.allclose(steps, torch.full_like(steps, 0.5 / w), atol=1e-5)


def test_shift_is_a_reflect_padded_translation():
    m, x = 2, images(6, size=8)
    out = S.shift_transform(m)(x, gen())
    padded = torch.nn.functional.pad(x, (m, m, m, m), mode="reflect")
    for i in range(len(x)):
        assert any(torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8])
                   for dy in range(2 * m + 1) for dx in range(2 * m + 1))


def test_invariance_hits_are_reproducible_per_seed():
    net, x = tiny_net(), images(10)
    t = S.crop_transform(0.3)
    a = S.invariance_hits(net, x, t, t, gen(5), batch_size=4)
    assert a.dtype == torch.bool and a.shape == (10,)
    assert torch.equal(a, S.invariance_hits(net, x, t, t, gen(5), batch_size=4))


# -- decision boundaries ------------------------------------------------------------------------------------
def test_plane_anchors_reconstruct_the_three_images():
    g = gen(6)
    x1, x2, x3 = (torch.rand(3, 8, 8, generator=g) for _ in range(3))
    plane = S.plane_grid(x1, x2, x3, resolution=7)
    basis = plane.basis.reshape(2, -1).double()
    assert torch.allclose(basis @ basis.T, torch.eye(2, dtype=torch.float64), atol=1e-6)
    for anchor, xk in zip(plane.anchors, (x1, x2, x3)):
        rebuilt = plane.origin.double() + torch.einsum("k,k...->...", anchor, plane.basis.double())
        assert torch.allclose(rebuilt, xk.double(), atol=1e-5)
    assert plane.images.shape == (49, 3, 8, 8) and plane.coords.shape == (49, 2)
    lo, hi = plane.anchors.min(0).values, plane.anchors.max(0).values
    assert torch.allclose(plane.coords.min(0).values, lo - 0.1 * (hi - lo))
    assert torch.allclose(plane.coords.max(0).values, hi + 0.1 * (hi - lo))


def test_plane_grid_lands_on_the_images_and_is_not_clamped():
    # x3 − x1 ⟂ x2 − x1, margin 0, resolution 2: the grid is exactly x1, x3, x2, x2 + x3 − x1 (row i·R + j = u_i, v_j).
    x1 = torch.full((3, 4, 4), 0.5)
    d1, d2 = torch.zeros(3, 4, 4), torch.zeros(3, 4, 4)
    d1[0], d2[1] = 0.4, 0.45
    plane = S.plane_grid(x1, x1 + d1, x1 + d2, resolution=2, margin=0.0)
    expected = torch.stack([x1, x1 + d2, x1 + d1, x1 + d1 + d2])
    assert torch.allclose(plane.images, expected, atol=1e-6)
    wide = S.plane_grid(x1, x1 + d1, x1 + d2, resolution=5, margin=1.5)
    assert wide.images.max() > 1.0 and wide.images.min() < 0.0  # leaves the pixel range, as Somepalli's planes do
    with pytest.raises(ConfigError, match="collinear"):
        S.plane_grid(x1, x1 + d1, x1 + 2 * d1)


class _Threshold(nn.Module):
    """A 2-pixel 'classifier': class 0 iff pixel k > 0.5."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        v = x.flatten(1)[:, self.k]
        return ModelOutput({"main": torch.stack([v - 0.5, 0.5 - v], 1)}, x.flatten(1))


def test_boundary_similarity_hand_example_and_self():
    # Images 1×1×2; triplet (0,0), (1,0), (0,1) spans the whole space; margin 0, 4×4 grid on {0, 1/3, 2/3, 1}².
    # A: class 0 iff u > 0.5 (8 points), B: class 0 iff v > 0.5 (8 points): per class |∩| = 4, |∪| = 12 → IoU 1/3;
    # agreement = (4 + 4)/16 = 0.5.
    prep = Preprocessing.identity((1, 1, 2), ("p", "q"))
    a, b = Net(_Threshold(0), prep), Net(_Threshold(1), prep)
    triplet = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).view(1, 3, 1, 1, 2)
    r = S.boundary_similarity(a, b, triplet, resolution=4, margin=0.0)
    assert r["iou"] == pytest.approx(1 / 3) and r["agreement"] == pytest.approx(0.5)
    same = S.boundary_similarity(a, a, triplet.repeat(2, 1, 1, 1, 1), resolution=4, margin=0.1)
    assert same["iou"] == 1.0 and same["agreement"] == 1.0 and same["iou_per_triplet"].shape == (2,)


def test_boundary_similarity_of_a_net_with_itself_is_one():
    net, x = tiny_net(), images(12)
    labels = torch.arange(12) % 4
    triplets = x[S.sample_triplets(labels, 3, gen())]
    r = S.boundary_similarity(net, net, triplets, resolution=6)
    assert r["iou"] == 1.0 and r["agreement"] == 1.0 and r["triplets"] == 3


def test_sample_triplets():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 3])
    t = S.sample_triplets(labels, 20, gen())
    assert t.shape == (20, 3) and t.dtype == torch.int64
    assert all(len(set(row.tolist())) == 3 for row in t) and t.min() >= 0 and t.max() < 9
    assert torch.equal(t, S.sample_triplets(labels, 20, gen()))
    c = S.sample_triplets(labels, 20, gen(), mode="classes")
    assert all(len(set(labels[row].tolist())) == 3 for row in c)
    with pytest.raises(ConfigError, match="3 classes"):
        S.sample_triplets(torch.tensor([0, 0, 1, 1]), 2, gen(), mode="classes")
    with pytest.raises(ConfigError, match="mode"):
        S.sample_triplets(labels, 2, gen(), mode="pairs")


# -- intervals ----------------------------------------------------------------------------------------------
def test_binomial_ci_is_wilson_contains_the_estimate_and_narrows():
    ci = S.binomial_ci(30, 40)
    z, p, n = 1.959963984540054, 0.75, 40
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (ci.low, ci.high) == pytest.approx((centre - half, centre + half), abs=1e-9)
    assert ci.low < ci.estimate == 0.75 < ci.high
    wide, narrow = S.binomial_ci(10, 20), S.binomial_ci(1000, 2000)
    assert narrow.high - narrow.low < wide.high - wide.low
    assert narrow.low < 0.5 < narrow.high


def test_bootstrap_ci():
    const = S.bootstrap_ci([0.7] * 25)
    assert const.low == const.high == pytest.approx(0.7) and const.estimate == pytest.approx(0.7)
    v = torch.arange(100, dtype=torch.float64)
    ci = S.bootstrap_ci(v, seed=3)
    se = float(v.std()) / 10
    assert ci.estimate == pytest.approx(49.5) and ci.low < 49.5 < ci.high
    assert ci.high - ci.low == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert S.bootstrap_ci(v, seed=3) == ci and S.bootstrap_ci(v, seed=4) != ci


def test_paired_bootstrap_diff():
    a = torch.rand(30, generator=gen())
    d = S.paired_bootstrap_diff(a + 1.0, a)
    assert d.estimate == pytest.approx(1.0) and d.low == pytest.approx(1.0) and d.high == pytest.approx(1.0)
    hits_a, hits_b = torch.rand(200, generator=gen(1)) < 0.8, torch.rand(200, generator=gen(2)) < 0.5
    diff = S.paired_bootstrap_diff(hits_a, hits_b)
    assert diff.low > 0 and diff.n == 200
    with pytest.raises(ConfigError, match="equal length"):
        S.paired_bootstrap_diff(a, a[:-1])


def test_too_few_samples_for_an_interval():
    assert S.min_n(0.95) == 10 and S.min_n(0.99) == 50
    for call in (lambda: S.binomial_ci(3, 9), lambda: S.bootstrap_ci([1.0] * 9),
                 lambda: S.paired_bootstrap_diff([1.0] * 9, [0.0] * 9)):
        with pytest.raises(ConfigError, match=r"too few images \(9\) for a 95% interval; pass at least 10"):
            call()
    with pytest.raises(ConfigError, match="confidence"):
        S.bootstrap_ci([1.0] * 20, confidence=1.5)
