"""Colour jitter, random greyscale and random resized crop: torchvision semantics, batched and seeded."""
from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F

from r18lab.cli import main
from r18lab.data.augment import Augment, resized_crop, resized_crop_boxes
from r18lab.data.color import (
    OPS, adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, color_jitter, grayscale, hsv_to_rgb,
    random_grayscale, rgb_to_grayscale, rgb_to_hsv,
)
from r18lab.errors import DataError

from helpers import tiny

PLAIN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # normalised value == value in [0, 1]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def floats(n=16, side=5, seed=0):
    return torch.rand(n, 3, side, side, generator=gen(seed))


def uint8s(n=32, side=8, seed=0):
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=gen(seed))


def pixels(*rgb):
    """A 1×3×1×k image from k RGB triples."""
    return torch.tensor(rgb, dtype=torch.float32).T.reshape(1, 3, 1, len(rgb))


# -- the pure colour ops ---------------------------------------------------------------------------------
def test_neutral_factors_are_the_identity():
    x = floats()
    for out in (adjust_brightness(x, 1.0), adjust_contrast(x, 1.0), adjust_saturation(x, 1.0), adjust_hue(x, 0.0)):
        torch.testing.assert_close(out, x, rtol=0, atol=1e-6)
    assert torch.equal(color_jitter(x, [0, 0, 0, 0], gen()), x)


def test_brightness_multiplies_then_clamps_with_one_factor_per_image():
    x = floats(n=3)
    f = torch.tensor([0.5, 1.0, 1.7])
    assert torch.equal(adjust_brightness(x, f), (x * f.view(3, 1, 1, 1)).clamp(0, 1))
    assert float(adjust_brightness(x, 1.7).max()) == 1.0 and float(adjust_brightness(x, 0.0).max()) == 0.0


def test_contrast_blends_with_the_mean_grey_level():
    x = pixels((1, 0, 0), (0, 0, 1))  # grey levels 0.299 and 0.114: image mean 0.2065
    m = (0.299 + 0.114) / 2
    half = torch.tensor([[0.5 + m / 2, m / 2], [m / 2, m / 2], [m / 2, 0.5 + m / 2]]).view(1, 3, 1, 2)
    torch.testing.assert_close(adjust_contrast(x, 0.5), half, rtol=0, atol=1e-6)
    double = (2 * x - m).clamp(0, 1)  # 1.79 -> 1, -0.21 -> 0
    torch.testing.assert_close(adjust_contrast(x, 2.0), double, rtol=0, atol=1e-6)
    torch.testing.assert_close(adjust_contrast(x, 0.0), torch.full_like(x, m), rtol=0, atol=1e-6)


def test_saturation_blends_with_the_per_pixel_grey():
    x = pixels((0.8, 0.4, 0.2), (0.1, 0.6, 0.3))
    g = torch.tensor([0.299 * 0.8 + 0.587 * 0.4 + 0.114 * 0.2, 0.299 * 0.1 + 0.587 * 0.6 + 0.114 * 0.3])
    torch.testing.assert_close(adjust_saturation(x, 0.0), g.view(1, 1, 1, 2).expand(1, 3, 1, 2), rtol=0, atol=1e-6)
    torch.testing.assert_close(adjust_saturation(x, 0.5), 0.5 * x + 0.5 * g.view(1, 1, 1, 2), rtol=0, atol=1e-6)
    torch.testing.assert_close(adjust_saturation(x, 3.0), (3 * x - 2 * g.view(1, 1, 1, 2)).clamp(0, 1),
                               rtol=0, atol=1e-6)


def test_hsv_of_known_colours_and_round_trip():
    x = pixels((1, 0, 0), (0, 1, 0), (0, 0, 1), (0.5, 0.5, 0.5), (0, 0, 0), (1, 0.5, 0), (1, 0, 1), (1, 1, 0))
    want = torch.tensor([[0, 1, 1], [1 / 3, 1, 1], [2 / 3, 1, 1], [0, 0, 0.5], [0, 0, 0], [1 / 12, 1, 1],
                         [5 / 6, 1, 1], [1 / 6, 1, 1]]).T.reshape(1, 3, 1, 8)
    torch.testing.assert_close(rgb_to_hsv(x), want, rtol=0, atol=1e-6)
    y = torch.cat([floats(n=64, side=8), (floats(n=8, side=8) * 4).round() / 4])  # quantised: ties, greys, black
    hsv = rgb_to_hsv(y)
    assert float(hsv[:, 0].min()) >= 0 and float(hsv[:, 0].max()) < 1 + 1e-6
    torch.testing.assert_close(hsv_to_rgb(hsv), y, rtol=0, atol=1e-5)


def test_hue_shifts_rotate_and_half_turn_twice_is_identity():
    x = floats(n=32)
    torch.testing.assert_close(adjust_hue(adjust_hue(x, 0.5), 0.5), x, rtol=0, atol=1e-5)
    torch.testing.assert_close(adjust_hue(adjust_hue(x, 0.3), -0.3), x, rtol=0, atol=1e-5)
    red = pixels((1, 0, 0), (0.5, 0.5, 0.5))
    torch.testing.assert_close(adjust_hue(red, 1 / 3), pixels((0, 1, 0), (0.5, 0.5, 0.5)), rtol=0, atol=1e-6)
    torch.testing.assert_close(adjust_hue(red, -1 / 3), pixels((0, 0, 1), (0.5, 0.5, 0.5)), rtol=0, atol=1e-6)
    hsv, shifted = rgb_to_hsv(x), rgb_to_hsv(adjust_hue(x, 0.25))
    torch.testing.assert_close(shifted[:, 1:], hsv[:, 1:], rtol=0, atol=1e-5)  # s and v kept
    delta = torch.linspace(-0.5, 0.5, 32)  # one shift per image: the fused op = the explicit HSV round trip
    rotated = torch.cat([torch.remainder(hsv[:, :1] + delta.view(-1, 1, 1, 1), 1.0), hsv[:, 1:]], 1)
    torch.testing.assert_close(adjust_hue(x, delta), hsv_to_rgb(rotated), rtol=0, atol=1e-5)


def test_greyscale_uses_601_weights_on_three_equal_channels():
    x = floats(n=8)
    want = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    g = grayscale(x)
    assert g.shape == x.shape and torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 1], g[:, 2])
    torch.testing.assert_close(g[:, 0], want, rtol=0, atol=1e-6)
    torch.testing.assert_close(rgb_to_grayscale(x)[:, 0], want, rtol=0, atol=1e-6)
    assert torch.equal(random_grayscale(x, 1.0, gen()), g) and torch.equal(random_grayscale(x, 0.0, gen()), x)
    half = random_grayscale(floats(n=200), 0.5, gen(1))
    grey = (half[:, 0] == half[:, 1]).flatten(1).all(1) & (half[:, 1] == half[:, 2]).flatten(1).all(1)
    assert 60 < int(grey.sum()) < 140


def test_one_channel_images_are_grey_already():
    x = torch.rand(4, 1, 3, 3, generator=gen())
    assert torch.equal(adjust_saturation(x, 0.2), x) and torch.equal(adjust_hue(x, 0.3), x)
    torch.testing.assert_close(adjust_contrast(x, 0.0), x.mean((1, 2, 3), keepdim=True).expand_as(x))
    with pytest.raises(DataError, match="1 or 3 channels"):
        adjust_hue(torch.rand(1, 2, 3, 3), 0.1)


# -- colour jitter: batched = a per-image loop with torchvision's draws --------------------------------------
def reference_jitter(x, jitter, seed, p=1.0):
    """The same draws as color_jitter, applied one image at a time in each image's own op order."""
    g, n = gen(seed), len(x)
    lows_highs = [(max(0, 1 - v), 1 + v) for v in jitter[:3]] + [(-jitter[3], jitter[3])]
    factors = [lo + (hi - lo) * torch.rand(n, generator=g) for lo, hi in lows_highs]
    order = torch.rand(n, 4, generator=g).argsort(1)
    applied = torch.rand(n, generator=g) < p
    out = x.clone()
    for i in range(n):
        if applied[i]:
            for j in order[i].tolist():
                if jitter[j] > 0:
                    out[i : i + 1] = OPS[j](out[i : i + 1], float(factors[j][i]))
    return out, order, applied


def test_jitter_matches_a_per_image_loop_in_random_order():
    x = floats(n=48, side=4)
    jitter = [0.4, 0.4, 0.4, 0.2]
    want, order, _ = reference_jitter(x, jitter, seed=3)
    torch.testing.assert_close(color_jitter(x, jitter, gen(3)), want, rtol=0, atol=1e-6)
    assert len({tuple(o) for o in order.tolist()}) > 10  # many orders in one batch
    want, _, applied = reference_jitter(x, [0.5, 0, 0.3, 0], seed=4, p=0.5)
    got = color_jitter(x, [0.5, 0, 0.3, 0], gen(4), p=0.5)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    untouched = (got == x).flatten(1).all(1)
    assert torch.equal(untouched, ~applied) and 0 < int(applied.sum()) < 48


def test_brightness_factors_cover_their_range():
    x = torch.full((2000, 3, 1, 1), 0.5)
    f = color_jitter(x, [0.4, 0, 0, 0], gen(5))[:, 0, 0, 0] / 0.5
    assert 0.6 <= float(f.min()) < 0.61 and 1.39 < float(f.max()) <= 1.4
    assert abs(float(f.mean()) - 1.0) < 0.02


# -- random resized crop -------------------------------------------------------------------------------------
def test_boxes_lie_inside_and_follow_the_scale_range():
    n, side = 4000, 64
    boxes = resized_crop_boxes(n, side, side, (0.25, 0.5), (3 / 4, 4 / 3), gen(6))
    top, left, h, w = boxes.unbind(1)
    assert boxes.dtype == torch.int64 and bool(((top >= 0) & (left >= 0) & (h > 0) & (w > 0)).all())
    assert bool(((top + h <= side) & (left + w <= side)).all())
    frac = (h * w).double() / side**2
    assert 0.24 < float(frac.min()) < 0.26 and 0.49 < float(frac.max()) < 0.52  # up to rounding the sides
    assert abs(float(frac.mean()) - 0.375) < 0.01  # area ~ U[0.25, 0.5]
    ar = (w.double() / h.double()).log()
    assert float(ar.min()) > math.log(3 / 4) - 0.05 and float(ar.max()) < math.log(4 / 3) + 0.05
    assert int(top.min()) == 0 and int((top + h).max()) == side  # positions reach both borders
    same = resized_crop_boxes(n, side, side, (0.25, 0.5), (3 / 4, 4 / 3), gen(6))
    assert torch.equal(boxes, same) and not torch.equal(boxes, resized_crop_boxes(n, side, side, (0.25, 0.5),
                                                                                    (3 / 4, 4 / 3), gen(7)))


def test_boxes_fall_back_to_the_centre_crop_when_no_attempt_fits():
    boxes = resized_crop_boxes(50, 32, 32, (0.9, 1.0), (3.0, 4.0), gen())  # every box would be ~52+ wide
    assert torch.equal(boxes, torch.tensor([[10, 0, 11, 32]]).expand(50, 4))  # h = round(32/3), centred
    whole = resized_crop_boxes(5, 32, 32, (1.0, 1.0), (1.0, 1.0), gen())
    assert torch.equal(whole, torch.tensor([[0, 0, 32, 32]]).expand(5, 4))


@pytest.mark.parametrize("size", [(8, 8), (5, 7), (16, 12)])
def test_resized_crop_equals_interpolate_of_each_crop(size):
    x = floats(n=40, side=8, seed=2)
    boxes = resized_crop_boxes(40, 8, 8, (0.08, 1.0), (0.75, 4 / 3), gen(8))
    got = resized_crop(x, boxes, size)
    for i, (t, l, h, w) in enumerate(boxes.tolist()):
        want = F.interpolate(x[i : i + 1, :, t : t + h, l : l + w], size=size, mode="bilinear", align_corners=False,
                             antialias=False)
        torch.testing.assert_close(got[i : i + 1], want, rtol=0, atol=1e-5)


def test_resized_crop_of_the_whole_image_is_the_identity():
    x = uint8s(n=16, side=8)
    aug = Augment(random_resized_crop=((1.0, 1.0), (1.0, 1.0)), padding=0, flip=False, **PLAIN)
    torch.testing.assert_close(aug(x, gen()), x.float() / 255, rtol=0, atol=1e-5)
    flipped = Augment(random_resized_crop=((1.0, 1.0), (1.0, 1.0)), padding=0, flip=True, **PLAIN)(x, gen(1))
    mirror = (flipped - x.flip(3).float() / 255).abs().flatten(1).amax(1) < 1e-5
    same = (flipped - x.float() / 255).abs().flatten(1).amax(1) < 1e-5
    assert bool((mirror | same).all()) and 0 < int(mirror.sum()) < 16


# -- the Augment pipeline --------------------------------------------------------------------------------------
def test_seeded_pipeline_is_deterministic_and_seeds_differ():
    x = uint8s(n=64)
    for aug in (Augment(crop=8, padding=2, color_jitter=(0.4, 0.4, 0.4, 0.1), grayscale_p=0.2, cutout=2),
                Augment(crop=6, padding=0, random_resized_crop=((0.08, 1.0), (0.75, 4 / 3)))):
        a, b, c = aug(x, gen(5)), aug(x, gen(5)), aug(x, gen(6))
        assert a.dtype == torch.float32 and a.shape == (64, 3, aug.crop, aug.crop)
        assert torch.equal(a, b) and not torch.equal(a, c)
        views = aug(x, gen(5), views=2)
        assert len(views) == 2 and not torch.equal(views[0], views[1])
        bare = Augment(crop=None, flip=False, mean=aug.mean, std=aug.std)
        assert torch.equal(aug.for_eval()(x, gen(0)), bare(x, gen(9)))


def test_jitter_after_crop_and_flip_before_normalise():
    x = uint8s(n=24)
    plain = Augment(crop=8, padding=2, **PLAIN)(x, gen(3))
    jitter = (0.4, 0.3, 0.2, 0.1)
    got = Augment(crop=8, padding=2, color_jitter=jitter, **PLAIN)(x, gen(3))
    g = gen(3)
    Augment(crop=8, padding=2, **PLAIN)(x, g)  # advance past the crop and flip draws
    torch.testing.assert_close(got, color_jitter(plain, jitter, g), rtol=0, atol=1e-6)


LEGACY = {  # sha256[:16] of the float32 outputs of the pre-colour-jitter code (same inputs and generators)
    "zero": ({"crop": 12, "padding": 3}, "9dfce2ce2849ecd6", "a36cf4d64406d941"),
    "reflect_cutout": ({"crop": 10, "padding": 2, "pad_mode": "reflect", "cutout": 4, "mean": (0.5, 0.4, 0.3),
                        "std": (0.2, 0.25, 0.3)}, "36aea9aba0101e5f", "8430b19aea2dfda3"),
    "noflip": ({"crop": 9, "padding": 0, "flip": False}, "a6461c0459269f7a", "ece5d6e9c4be51b9"),
    "flip_only": ({"crop": None, "flip": True, "cutout": 3}, "71ac9b95f4addcfb", "5cb8439252fbeb5f"),
}


@pytest.mark.parametrize("case", sorted(LEGACY))
def test_uint8_path_is_bit_identical_to_before(case):
    kwargs, one, two = LEGACY[case]
    x = torch.randint(0, 256, (64, 3, 12, 12), dtype=torch.uint8, generator=gen(123))
    digest = lambda t: hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]  # noqa: E731
    aug = Augment(**kwargs)
    assert digest(aug(x, gen(7))) == one
    assert digest(torch.cat(aug(x, gen(8), views=2))) == two


def test_augment_refuses_bad_values():
    with pytest.raises(DataError, match="padding must be 0"):
        Augment(random_resized_crop=((0.08, 1.0), (0.75, 4 / 3)))
    with pytest.raises(DataError, match="0 < lo <= hi <= 1"):
        Augment(padding=0, random_resized_crop=((0.5, 0.2), (0.75, 4 / 3)))
    with pytest.raises(DataError, match="hue <= 0.5"):
        Augment(color_jitter=(0.4, 0.4, 0.4, 0.6))
    with pytest.raises(DataError, match="hue <= 0.5"):
        Augment(color_jitter=(-0.1, 0.4, 0.4, 0.1))
    with pytest.raises(DataError, match="probabilities"):
        Augment(grayscale_p=1.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_generator_gives_the_same_augmentation_on_cuda():
    x = uint8s(n=64)
    for aug in (Augment(crop=8, padding=2, color_jitter=(0.4, 0.4, 0.4, 0.1), grayscale_p=0.2, cutout=2),
                Augment(crop=8, padding=0, random_resized_crop=((0.08, 1.0), (0.75, 4 / 3)))):
        torch.testing.assert_close(aug(x.cuda(), gen(4)).cpu(), aug(x, gen(4)), rtol=0, atol=1e-4)


# -- the config keys through the command line -------------------------------------------------------------------
def test_recipe_keys_train_from_the_command_line(tmp_path):
    argv = ["train", *tiny("train.epochs=1", "data.augment.color_jitter=[0.4,0.4,0.4,0.1]",
                           "data.augment.random_resized_crop={scale: [0.08, 1.0]}", "data.augment.padding=0",
                           "data.augment.grayscale_p=0.2", "data.augment.color_jitter_p=0.8"),
            "--out", str(tmp_path / "run")]
    assert main(argv) == 0


@pytest.mark.parametrize("overrides, message", [
    (["data.augment.random_resized_crop={scale: [0.08, 1.0]}"], "set data.augment.padding=0"),
    (["data.augment.color_jitter=[-0.4,0.4,0.4,0.1]"], "hue <= 0.5"),
    (["data.augment.color_jitter=[0.4,0.4,0.4,0.6]"], "hue <= 0.5"),
    (["data.augment.random_resized_crop={scale: [1.0, 0.08]}", "data.augment.padding=0"], "0 < lo <= hi <= 1"),
    (["data.augment.grayscale_p=2"], "grayscale_p"),
])
def test_bad_augment_keys_exit_2_with_one_line(tmp_path, capsys, overrides, message):
    assert main(["train", *tiny(*overrides), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not (tmp_path / "bad").exists()


def test_sync_free_jitter_path_equals_the_grouped_one():
    """The CUDA path (every op on the whole batch, torch.where) gives the CPU path's images exactly."""
    import r18lab.data.color as color

    g = torch.Generator().manual_seed(3)
    x = torch.rand(16, 3, 6, 6, generator=g)
    order = torch.rand(16, 4, generator=g).argsort(1)
    applied = torch.rand(16, generator=g) < 0.7
    factors = [torch.rand(16, generator=g) * 0.8 + 0.6 for _ in range(3)] + [torch.rand(16, generator=g) * 0.2 - 0.1]
    a = color._apply_in_order(x, order, applied, factors, [0, 1, 2, 3], grouped=True)
    b = color._apply_in_order(x, order, applied, factors, [0, 1, 2, 3], grouped=False)
    assert not torch.equal(a, x)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
