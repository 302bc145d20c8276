"""Generated unseen domains (spec 002c §2 M7, §4 K5): shapes, ranges, identities, severities, seeding, errors."""
import pytest
import torch

from r18lab.data.domains import DOMAINS, apply_domain, gaussian_kernel
from r18lab.errors import ConfigError, DataError


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(DOMAINS))
@pytest.mark.parametrize("severity", [1, 5])
def test_shape_dtype_and_range_are_kept(name, severity):
    x = images()
    out = apply_domain(name, x, severity)
    assert out.shape == x.shape and out.dtype == x.dtype and out.min() >= 0 and out.max() <= 1
    u = (x * 255).round().to(torch.uint8)
    out8 = apply_domain(name, u, severity)
    assert out8.shape == u.shape and out8.dtype == torch.uint8
    assert (out8.float() / 255 - out).abs().max() <= 3 / 255  # uint8 in/out is the float result, rounded


def test_expected_domains_are_registered():
    assert {"grayscale", "invert", "edges", "gaussian_noise", "gaussian_blur", "contrast", "brightness"} <= set(DOMAINS)


def test_grayscale_has_equal_channels_and_bt601_weights():
    x = images()
    g = apply_domain("grayscale", x)
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 1], g[:, 2])
    torch.testing.assert_close(g[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])


def test_invert_twice_is_the_identity():
    u = (images() * 255).to(torch.uint8)
    assert torch.equal(apply_domain("invert", apply_domain("invert", u)), u)
    x = images()
    torch.testing.assert_close(apply_domain("invert", apply_domain("invert", x)), x)


def test_edges_of_a_constant_image_are_zero_and_a_step_is_found():
    assert torch.equal(apply_domain("edges", torch.full((2, 3, 8, 8), 0.4)), torch.zeros(2, 3, 8, 8))
    step = torch.zeros(1, 3, 8, 8)
    step[..., 4:] = 1.0
    e = apply_domain("edges", step)
    assert e.max() == 1.0 and e[..., :, 3:5].min() == 1.0 and e[..., :, :2].max() == 0 and e[..., :, 6:].max() == 0


def test_noise_grows_with_severity_and_is_seeded():
    x = torch.full((8, 3, 16, 16), 0.5)
    deltas = [(apply_domain("gaussian_noise", x, s, torch.Generator().manual_seed(0)) - x).abs().mean() for s in
              range(1, 6)]
    assert all(a < b for a, b in zip(deltas, deltas[1:]))
    a = apply_domain("gaussian_noise", x, 3, torch.Generator().manual_seed(7))
    assert torch.equal(a, apply_domain("gaussian_noise", x, 3, torch.Generator().manual_seed(7)))
    assert not torch.equal(a, apply_domain("gaussian_noise", x, 3, torch.Generator().manual_seed(8)))
    assert torch.equal(apply_domain("gaussian_noise", x), apply_domain("gaussian_noise", x))  # default: seed 0


def test_blur_contrast_brightness_follow_their_formulas():
    flat = torch.full((1, 3, 8, 8), 0.3)
    torch.testing.assert_close(apply_domain("gaussian_blur", flat, 5), flat)  # normalised kernel, replicated edges
    k = gaussian_kernel(1.0)
    assert len(k) == 9 and float(k.sum()) == pytest.approx(1.0)  # radius int(4σ + 0.5) = 4
    x = images()
    m = x.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(apply_domain("contrast", x, 2), ((x - m) * 0.5 + m).clamp(0, 1))
    grey = torch.full((1, 3, 2, 2), 0.5)
    torch.testing.assert_close(apply_domain("brightness", grey, 5), torch.full((1, 3, 2, 2), 0.8))
    red = torch.tensor([0.6, 0.3, 0.0]).view(1, 3, 1, 1)  # V = 0.6 → 0.8: H and S kept, so every channel × 4/3
    torch.testing.assert_close(apply_domain("brightness", red, 4), red * 0.8 / 0.6)
    assert torch.equal(apply_domain("brightness", torch.zeros(1, 3, 1, 1), 1), torch.full((1, 3, 1, 1), 0.05))


def test_unknown_domain_and_bad_severity_are_config_errors():
    with pytest.raises(ConfigError, match="grayscale"):
        apply_domain("sketch", images())
    for bad in (0, 6, 2.5, True):
        with pytest.raises(ConfigError, match="severity"):
            apply_domain("contrast", images(), bad)
    with pytest.raises(ConfigError, match="severity"):
        DOMAINS["invert"](images(), severity=9)
    with pytest.raises(DataError):
        apply_domain("invert", torch.zeros(3, 8, 8))
