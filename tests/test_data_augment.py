"""Augment: crops are windows of the padded image, flips mirror them, normalise and cutout are exact."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from r18lab.data import Dataset
from r18lab.data.augment import CIFAR10_MEAN, CIFAR10_STD, Augment, channel_stats, normalize_only
from r18lab.errors import DataError

IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255, 1 / 255, 1 / 255)}  # normalised value == pixel value


def images(n=32, side=6, seed=0):
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def matching_windows(out: np.ndarray, img: np.ndarray, padding: int, mode: str) -> list[tuple[int, int, bool]]:
    """Every (dy, dx, flipped) such that out is that window of img padded by padding (mode) and maybe mirrored."""
    padded = np.pad(img, ((0, 0), (padding, padding), (padding, padding)), mode="constant" if mode == "zero" else "reflect")
    crop = out.shape[-1]
    found = []
    for dy in range(padded.shape[1] - crop + 1):
        for dx in range(padded.shape[2] - crop + 1):
            window = padded[:, dy : dy + crop, dx : dx + crop]
            found += [(dy, dx, f) for f, w in ((False, window), (True, window[:, :, ::-1])) if np.array_equal(out, w)]
    return found


@pytest.mark.parametrize("mode", ["zero", "reflect"])
def test_every_output_is_a_padded_window_and_offsets_flips_vary(mode):
    x = images(n=48)
    out = Augment(crop=6, padding=2, pad_mode=mode, **IDENTITY)(x, gen(1))
    assert out.dtype == torch.float32 and out.shape == (48, 3, 6, 6) and out.device == x.device
    seen = set()
    for o, img in zip(out.round().to(torch.uint8).numpy(), x.numpy()):
        found = matching_windows(o, img, 2, mode)
        assert found, "output is not a crop of the padded input"
        seen.update(found)
    assert {f for _, _, f in seen} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in seen}) > 10


def test_crop_without_padding_and_flip_only():
    x = images(n=16, side=8)
    out = Augment(crop=5, padding=0, flip=False, **IDENTITY)(x, gen(2)).round().to(torch.uint8).numpy()
    assert out.shape == (16, 3, 5, 5)
    for o, img in zip(out, x.numpy()):
        assert any(not flipped for _, _, flipped in matching_windows(o, img, 0, "zero"))
    flipped = Augment(crop=None, flip=True, **IDENTITY)(x, gen(3)).round().to(torch.uint8)
    is_mirror = (flipped == x.flip(3)).flatten(1).all(1)
    is_same = (flipped == x).flatten(1).all(1)
    assert bool((is_mirror | is_same).all()) and 0 < int(is_mirror.sum()) < 16


def test_seeded_generator_gives_identical_batches_and_another_seed_differs():
    x = images(n=64, side=8)
    aug = Augment(crop=8, padding=3, cutout=3)
    a, b, c = aug(x, gen(5)), aug(x, gen(5)), aug(x, gen(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_normalize_exact_values_and_eval_matches():
    x = torch.tensor([0, 255, 51], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 3, 2, 2).contiguous()
    out = normalize_only(x)
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (x.float() / 255 - mean) / std, rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1, 0, 0, 0], torch.tensor((1 - 0.4914) / 0.2470), rtol=0, atol=1e-5)
    aug = Augment(crop=2, padding=1, cutout=1)
    assert torch.equal(aug.for_eval()(x, gen(0)), out)


def test_cutout_zeroes_one_clipped_square_per_sample():
    x = torch.full((200, 3, 8, 8), 255, dtype=torch.uint8)
    out = Augment(crop=None, flip=False, cutout=4, mean=(0, 0, 0), std=(1, 1, 1))(x, gen(4))
    zero = out == 0
    assert torch.equal(zero, zero[:, :1].expand_as(zero))  # same square in every channel
    assert bool(((out == 1) | zero).all())
    sizes = set()
    for mask in zero[:, 0].numpy():
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4
        assert np.array_equal(rows, np.arange(rows[0], rows[-1] + 1))
        assert np.array_equal(mask, np.outer(mask.any(1), mask.any(0)))  # a rectangle
        sizes.add((len(rows), len(cols)))
    assert (4, 4) in sizes and len(sizes) > 1  # full squares inside, clipped ones at the border


def test_views_are_independent_valid_crops():
    x = images(n=8)
    views = Augment(crop=6, padding=2, **IDENTITY)(x, gen(7), views=3)
    assert isinstance(views, list) and len(views) == 3 and all(v.shape == (8, 3, 6, 6) for v in views)
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])
    for v in views:
        for o, img in zip(v.round().to(torch.uint8).numpy(), x.numpy()):
            assert matching_windows(o, img, 2, "zero")


def test_bad_arguments_raise_data_error():
    with pytest.raises(DataError, match="uint8 N×C×H×W tensor, got torch.float32"):
        Augment(crop=4)(torch.zeros(2, 3, 4, 4), gen())
    with pytest.raises(DataError, match="pad_mode 'edge' is unknown; choose one of: zero, reflect"):
        Augment(pad_mode="edge")
    with pytest.raises(DataError, match="crop 20 is larger than the padded 12×12"):
        Augment(crop=20, padding=2)(images(side=8), gen())
    with pytest.raises(DataError, match="reflect padding 8 needs images larger than it, got 8×8"):
        Augment(crop=8, padding=8, pad_mode="reflect")(images(side=8), gen())
    with pytest.raises(DataError, match="mean/std have 3/3 values but images have 1 channels"):
        normalize_only(torch.zeros(1, 1, 2, 2, dtype=torch.uint8))


def test_channel_stats_exact():
    imgs = np.zeros((4, 2, 2, 3), np.uint8)
    imgs[:2, ..., 0] = 255  # channel 0: half 0, half 1
    imgs[..., 1] = 51  # channel 1: constant 0.2
    imgs[..., 2] = np.array([0, 0, 0, 255], np.uint8)[:, None, None]
    mean, std = channel_stats(Dataset(imgs, np.zeros(4, np.int64), ["a"]), chunk=3)
    np.testing.assert_allclose(mean, (0.5, 0.2, 0.25), atol=1e-12)
    np.testing.assert_allclose(std, (0.5, 0.0, np.sqrt(0.1875)), atol=1e-12)
