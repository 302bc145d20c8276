"""CIFAR-10-C corruptions (make_cifar_c.py constants) and `eval --corruptions`: shapes, determinism, monotonicity,
reference constants and formulas, the table/JSON/compare CLI, and bad names."""
import json

import numpy as np
import pytest
import torch

from r18lab.cli import main
from r18lab.data import corruptions as C
from r18lab.errors import ConfigError

from helpers import tiny

MADE = [n for n in C.CORRUPTIONS if n not in C.MISSING]


def images(n: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=size, mode="bilinear")
    return (0.15 + 0.7 * smooth + 0.1 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


def test_the_fifteen_are_registered_and_frost_is_missing_with_a_reason():
    assert list(C.CORRUPTIONS) == ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
                                   "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
                                   "elastic_transform", "pixelate", "jpeg_compression"]
    assert C.MISSING == ("frost",) and set(C.FIDELITY) == set(C.CORRUPTIONS)
    with pytest.raises(ConfigError, match="frost1"):
        C.corrupt("frost", images())
    with pytest.raises(ConfigError, match="frost1"):
        C.resolve("frost,fog")
    assert "frost" not in C.resolve("all") and len(C.resolve("all")) == 14


@pytest.mark.parametrize("name", MADE)
def test_every_severity_changes_keeps_and_is_deterministic(name):
    x = images()
    u = (x * 255).round().to(torch.uint8)
    for s in C.SEVERITIES:
        out = C.corrupt(name, x, s, seed=1)
        assert out.shape == x.shape and out.dtype == x.dtype and out.min() >= 0 and out.max() <= 1
        assert not torch.equal(out, x), (name, s)
        assert torch.equal(out, C.corrupt(name, x, s, seed=1))
        o8 = C.corrupt(name, u, s, seed=1)
        assert o8.dtype == torch.uint8 and o8.shape == u.shape and not torch.equal(o8, u)
        assert torch.equal(o8, C.corrupt(name, u, s, seed=1))


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow",
                                  "fog", "elastic_transform"])
def test_random_corruptions_depend_on_the_seed(name):
    x = images()
    assert not torch.equal(C.corrupt(name, x, 3, seed=0), C.corrupt(name, x, 3, seed=1))


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "zoom_blur",
                                  "contrast", "brightness", "pixelate", "jpeg_compression"])
def test_distortion_grows_with_severity(name):
    x = images(4, 32)
    d = [float((C.corrupt(name, x, s) - x).abs().mean()) for s in C.SEVERITIES]
    assert all(a < b for a, b in zip(d, d[1:])), (name, d)


def test_noise_constants_and_statistics_match_make_cifar_c():
    assert C.NOISE_SIGMA == (0.04, 0.06, 0.08, 0.09, 0.10)  # hand-checked against make_cifar_c.py
    assert C.SHOT_RATE == (500, 250, 100, 75, 50) and C.IMPULSE_AMOUNT == (0.01, 0.02, 0.03, 0.05, 0.07)
    assert C.DEFOCUS[3] == (1, 0.2) and C.GLASS[4] == (0.4, 1, 2) and C.JPEG_QUALITY == (80, 65, 58, 50, 40)
    mid = torch.full((2, 3, 64, 64), 0.5)
    assert float((C.corrupt("gaussian_noise", mid, 4) - 0.5).std()) == pytest.approx(0.09, rel=0.03)
    shot = C.corrupt("shot_noise", mid, 5)  # Poisson(25)/50: mean 0.5, std 5/50
    assert float(shot.mean()) == pytest.approx(0.5, abs=0.01) and float(shot.std()) == pytest.approx(0.1, rel=0.05)
    imp = C.corrupt("impulse_noise", mid, 5)
    assert float((imp != 0.5).float().mean()) == pytest.approx(0.07, abs=0.01)
    assert set(imp.unique().tolist()) == {0.0, 0.5, 1.0}


def test_zoom_and_disk_follow_the_reference_helpers():
    from scipy.ndimage import zoom as scizoom
    x = np.random.default_rng(0).random((16, 16))
    for f in (1.06, 1.2, 1.75, 2.25):
        ch = int(np.ceil(16 / f))
        top = (16 - ch) // 2
        ref = scizoom(x[top:top + ch, top:top + ch], f, order=1)
        t = (ref.shape[0] - 16) // 2
        got = C.clipped_zoom(torch.tensor(x)[None, None], f)[0, 0].numpy()
        np.testing.assert_allclose(got, ref[t:t + 16, t:t + 16], atol=1e-12)
    k = C.disk_kernel(0.3, 0.4)
    assert k.shape == (17, 17) and float(k.sum()) == pytest.approx(1.0) and k[8, 8] == k.max()
    flat = torch.full((1, 3, 8, 8), 0.4)
    for name in ("defocus_blur", "zoom_blur"):
        torch.testing.assert_close(C.corrupt(name, flat, 5), flat)  # normalised kernels keep a flat image


def test_motion_kernel_is_imagemagick_shaped():
    w, off = C.motion_kernel_offsets(6, 1.0, 0.0)
    assert len(w) == 13 and w[0] == w.max() and float(w.sum()) == pytest.approx(1.0)
    assert off[:, 1].tolist() == [0] * 13 and off[:, 0].tolist() == list(range(13))  # one-sided along x
    dot = torch.zeros(1, 3, 16, 16)
    dot[..., 8, 3] = 1.0  # Wand (ImageMagick 6) MagickMotionBlurImage(6, 1, angle) of this image, read as uint8:
    for angle, line in ((0.0, lambda t: t[0, 0, 8, :]), (90.0, lambda t: t[0, 0, :, 3])):
        got = C._truncate8(C.motion_blur_batch(dot, 6, 1.0, torch.tensor([angle]))) * 255
        want = [1, 19, 88, 145] + [0] * 12 if angle == 0 else [0] * 5 + [1, 19, 88, 145] + [0] * 7
        assert line(got).round().tolist() == want and int((got[0, 0] > 0).sum()) == 4


def test_defocus_disk_equals_opencvs():
    """Centre 3×3 of make_cifar_c.py's disk(r, alias_blur) as cv2 5.0 computes it (hand-copied values)."""
    want = {(0.3, 0.4): [[0.001631, 0.037126, 0.001631], [0.037126, 0.844973, 0.037126],
                         [0.001631, 0.037126, 0.001631]],
            (1.5, 0.1): [[0.111111] * 3] * 3}
    for (r, a), centre in want.items():
        torch.testing.assert_close(C.disk_kernel(r, a)[7:10, 7:10], torch.tensor(centre, dtype=torch.float64),
                                   atol=2e-6, rtol=0)


def test_unknown_names_and_bad_severity():
    with pytest.raises(ConfigError, match="gaussian_noise, shot_noise"):
        C.resolve("gaussian_noise,fuzz")
    with pytest.raises(ConfigError, match="severity"):
        C.corrupt("contrast", images(), 6)


def test_benchmark_reports_rates():
    rates = C.benchmark(n=4, size=8, names=["contrast", "glass_blur"])
    assert set(rates) == {"contrast", "glass_blur"} and all(r > 0 for r in rates.values())


def test_eval_cli_table_json_compare_plot_and_cache(tmp_path, capsys):
    data = ["synthetic", "num_classes=4", "image_size=8", "n=64"]
    for name in ("a", "b"):
        assert main(["train", *tiny("data.options={num_classes: 4, image_size: 8, n: 64}", "train.epochs=1"),
                     "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    ck = str(tmp_path / "a" / "model.safetensors")
    args = ["eval", ck, *data, "--corruptions", "contrast,gaussian_noise", "--severities", "1,5"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| corruption | s1 | s5 | mean |" in out and "| contrast |" in out and "| mean |" in out
    cached = sorted(p.name for p in (tmp_path / "cache" / "corruptions").glob("*.npz"))
    assert len(cached) == 4 and any("contrast-s5-seed0" in n for n in cached)
    png = tmp_path / "rob.png"
    assert main([*args, "--json", "--compare", str(tmp_path / "b" / "model.safetensors"), "--plot", str(png)]) == 0
    table = json.loads(capsys.readouterr().out)
    (series, t), = list(table["series"].items())[:1]
    assert set(t["acc"]) == {"contrast", "gaussian_noise"} and set(t["mean_per_severity"]) == {"1", "5"}
    assert t["mean"] == pytest.approx(np.mean([v for r in t["acc"].values() for v in r.values()]))
    cmp = table["comparison"]
    lo, hi = cmp["overall"]["ci95"]
    assert lo <= cmp["overall"]["diff"] <= hi and cmp["a"] != cmp["b"]
    assert set(cmp["per_corruption"]) == {"contrast", "gaussian_noise"} and png.is_file()
    assert main(["eval", ck, *data, "--corruptions", "fuzz"]) == 2
    assert "choose all or some of" in capsys.readouterr().err
    assert main(["eval", ck, *data, "--corruptions", "all", "--severities", "0,9"]) == 2
    assert main(["eval", ck, *data, "--compare", ck]) == 2


def test_glass_blur_copies_like_the_reference_loop(monkeypatch):
    """The reference's numpy 'swap' `x[h, w], x[h', w'] = x[h', w'], x[h, w]` (literal below) is a copy; our batched
    pass must equal that loop, given the same (dx, dy) draws, for every image of a batch."""
    x = images(2, 8)
    draws = torch.randint(-1, 1, (2, 36, 2, 2), generator=torch.Generator().manual_seed(3))  # iterations × P × 2 × N
    it = iter(draws)
    monkeypatch.setattr(torch, "randint", lambda *a, **k: next(it))
    got = C.CORRUPTIONS["glass_blur"](x, 5)
    monkeypatch.undo()
    sigma = C.GLASS[4][0]
    for k in range(2):
        a = ((C._blur(x[k:k + 1], sigma) * 255).floor() / 255)[0].permute(1, 2, 0).numpy().copy()
        for d in draws:
            p = 0
            for h in range(7, 1, -1):
                for w in range(7, 1, -1):
                    dx, dy = int(d[p, 0, k]), int(d[p, 1, k])
                    a[h, w], a[h + dy, w + dx] = a[h + dy, w + dx], a[h, w]
                    p += 1
        want = C._blur(torch.from_numpy(a).permute(2, 0, 1)[None], sigma).clamp(0, 1)
        torch.testing.assert_close(got[k:k + 1], want)
