"""Layer spectra and power-law fits (r18lab.analysis.spectrum) and their plots."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from r18lab.analysis.spectrum import (ROW_FIELDS, analyze, fit_power_law, layer_spectra, to_csv,
                                      warning_for, weight_spectrum)
from r18lab.analysis.spectrum_plots import plot_alpha_by_depth, plot_esd
from r18lab.errors import CheckpointError, ConfigError, DataError


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 4, 1), nn.Flatten(), nn.Linear(4 * 5 * 5, 10),
    )


def pareto(n: int, alpha: float, xmin: float, seed: int) -> torch.Tensor:
    """λ = xmin·U^(−1/(α−1)): a continuous power law p(λ) ∝ λ^(−α) on [xmin, ∞)."""
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return xmin * u ** (-1.0 / (alpha - 1.0))


def exhaustive_ks(evals: np.ndarray) -> tuple[float, float, float, int]:
    """Reference: WeightWatcher's default analyze() fit written as a plain loop over every candidate."""
    x = np.sort(np.asarray(evals, dtype=np.float64))
    x = x[x > 1e-5]
    N = len(x)
    small = N < 20
    best = (math.inf, None)
    for i in range(N - 1):
        n = N - i
        s = float(np.sum(np.log(x[i:] / x[i])))
        if small:
            if n < 8 or s <= 1e-12:
                continue
            alpha = 1 + (n - 1) / s
        else:
            alpha = 1 + n / s
        if alpha <= 1:
            continue
        d = float(np.max(np.abs(1 - (x[i:] / x[i]) ** (1 - alpha) - np.arange(n) / n)))
        if d < best[0]:
            best = (d, (alpha, x[i], d, n))
    return best[1]


# --------------------------------------------------------------------------------------------- spectra


def test_linear_diagonal_spectrum_and_median_fit_by_hand():
    lin = nn.Linear(5, 7, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[:5, :5] = torch.diag(torch.tensor([3.0, 1.0, 5.0, 2.0, 4.0]))
    spectra = layer_spectra(nn.Sequential(lin))
    assert list(spectra) == ["0"]
    lam = spectra["0"]
    assert lam.dtype == torch.float64
    assert torch.allclose(lam, torch.tensor([1.0, 4.0, 9.0, 16.0, 25.0], dtype=torch.float64), atol=1e-5)

    fit = fit_power_law(torch.tensor([1.0, 4.0, 9.0, 16.0, 25.0], dtype=torch.float64), xmin="median")
    # TempBalance: i = int(5/2) = 2 → λ_min = 9, tail (9, 16, 25), n = 3
    alpha = 1 + 3 / (math.log(9 / 9) + math.log(16 / 9) + math.log(25 / 9))
    d = max(abs(1 - (v / 9) ** (1 - alpha) - k / 3) for k, v in enumerate([9, 16, 25]))
    assert (fit.xmin, fit.n_tail) == (9.0, 3)
    assert fit.alpha == pytest.approx(alpha, rel=1e-12)
    assert fit.ks_distance == pytest.approx(d, rel=1e-12)


def test_conv_spectrum_pools_half_scaled_slices():
    conv = nn.Conv2d(2, 3, kernel_size=2, bias=False)
    torch.manual_seed(1)
    w = conv.weight.detach().double().numpy()                       # (out=3, in=2, 2, 2)
    expected = np.sort(np.concatenate([np.linalg.svd(w[:, :, i, j], compute_uv=False) ** 2 * 0.5
                                       for i in range(2) for j in range(2)]))
    lam = layer_spectra(nn.Sequential(conv))["0"].numpy()
    assert lam.shape == (4 * 2,)
    np.testing.assert_allclose(lam, expected, rtol=1e-5)

    # a kernel whose slices are known diagonal matrices: eigenvalues are 0.5·d² of every slice
    k = torch.zeros(2, 2, 1, 2)
    k[:, :, 0, 0] = torch.diag(torch.tensor([1.0, 2.0]))
    k[:, :, 0, 1] = torch.diag(torch.tensor([3.0, 4.0]))
    assert weight_spectrum(k).tolist() == pytest.approx([0.5, 2.0, 4.5, 8.0])


def test_layer_spectra_names_and_sizes():
    spectra = layer_spectra(small_net())
    assert list(spectra) == ["0", "3", "6", "8"]                   # convs and the linear, BatchNorm skipped
    assert {k: v.numel() for k, v in spectra.items()} == {"0": 9 * 3, "3": 9 * 8, "6": 1 * 4, "8": 10}
    for v in spectra.values():
        assert bool((v[1:] >= v[:-1]).all())                       # ascending


def test_non_finite_weights_are_a_data_error():
    net = small_net()
    with torch.no_grad():
        net[3].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="'3'"):
        layer_spectra(net)


# --------------------------------------------------------------------------------------------- fits


@pytest.mark.parametrize("alpha", [2.5, 4.0])
@pytest.mark.parametrize("mode", ["median", "ks"])
def test_pareto_alpha_recovered(alpha, mode):
    fit = fit_power_law(pareto(5000, alpha, 2.0, seed=int(alpha * 10)), xmin=mode)
    assert fit.alpha == pytest.approx(alpha, rel=0.03)
    assert fit.n_tail >= 1000
    assert 0 <= fit.ks_distance < 0.03


@pytest.mark.parametrize("alpha", [2.5, 4.0])
def test_ks_finds_the_tail_start_above_a_bulk(alpha):
    g = torch.Generator().manual_seed(7)
    bulk = 0.05 + 1.95 * torch.rand(2000, generator=g, dtype=torch.float64)   # not a power law, below 2
    lam = torch.cat([bulk, pareto(5000, alpha, 2.0, seed=3)])
    fit = fit_power_law(lam, xmin="ks")
    assert 2.0 <= fit.xmin <= 2.8
    assert fit.alpha == pytest.approx(alpha, rel=0.04)


@pytest.mark.parametrize("n,seed", [(12, 0), (19, 1), (40, 2), (600, 3), (3000, 4)])
def test_ks_equals_exhaustive_search(n, seed):
    """The pruned, vectorised KS search returns exactly what the candidate-by-candidate loop returns."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(max(n, 4), n // 2 + 3, generator=g, dtype=torch.float64)
    lam = torch.cat([torch.linalg.svdvals(a) ** 2, pareto(n - n // 2 - 3, 3.0, 1.0, seed)])[:n]
    lam = torch.cat([lam, torch.tensor([0.0, 1e-7], dtype=torch.float64)])  # ≤ 1e-5: dropped
    alpha, xmin, d, n_tail = exhaustive_ks(lam.numpy())
    fit = fit_power_law(lam, xmin="ks")
    assert fit.alpha == pytest.approx(alpha, rel=1e-9)
    assert fit.xmin == xmin and fit.n_tail == n_tail
    assert fit.ks_distance == pytest.approx(d, rel=1e-9)


def test_fit_accepts_arrays_and_handles_degenerate_input():
    assert fit_power_law(np.array([4.0, 1.0, 2.0, 3.0]), "median").xmin == 3.0       # sorted internally
    assert math.isnan(fit_power_law(torch.tensor([1e-9, 0.0]), "ks").alpha)            # nothing left to fit
    assert math.isnan(fit_power_law(torch.ones(10), "median").alpha)                    # no finite exponent
    with pytest.raises(DataError):
        fit_power_law(torch.ones(2, 2), "ks")


def test_invalid_xmin_is_a_config_error():
    with pytest.raises(ConfigError, match="xmin"):
        fit_power_law(torch.arange(1.0, 10.0), xmin="mean")
    with pytest.raises(ConfigError, match="xmin"):
        analyze(small_net(), xmin="auto")
    with pytest.raises(ConfigError):
        analyze(small_net(), min_evals=-1)


def test_warning_wording():
    assert warning_for(1.5) == "over-trained"
    assert warning_for(2.0) == "" and warning_for(6.0) == ""
    assert warning_for(6.5) == "under-trained"
    assert warning_for(math.nan) == "fit-failed"


# --------------------------------------------------------------------------------------------- analyze


def test_analyze_rows_module_and_path_agree(tmp_path):
    from safetensors.torch import save_file

    net = small_net()
    rows = analyze(net, xmin="ks")
    assert [r["name"] for r in rows] == ["0", "3", "6", "8"]
    assert [r["kind"] for r in rows] == ["conv", "conv", "conv", "linear"]
    assert rows[0]["shape"] == [8, 3, 3, 3] and rows[0]["num_evals"] == 27
    for r in rows:
        assert tuple(r) == ROW_FIELDS
        lam = weight_spectrum(dict(net.named_modules())[r["name"]].weight)
        assert r["lambda_max"] == pytest.approx(float(lam[-1]))
        assert r["stable_rank"] == pytest.approx(float(lam.sum() / lam[-1]))
        assert r["alpha_weighted"] == pytest.approx(r["alpha"] * math.log10(r["lambda_max"]))
        assert r["log_alpha_norm"] == pytest.approx(math.log10(float((lam ** r["alpha"]).sum())))
    json.dumps(rows, allow_nan=False)                                 # JSON-serialisable as is

    path = tmp_path / "net.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    from_path = {r["name"]: r for r in analyze(path, xmin="ks")}
    assert set(from_path) == {"0", "3", "6", "8"}                    # 1-D BatchNorm weights skipped
    for r in rows:
        assert from_path[r["name"]] == r                                # same weights, same numbers
    assert {r["name"] for r in analyze(net.state_dict())} == set(from_path)

    assert [r["name"] for r in analyze(net, min_evals=20)] == ["0", "3"]


def test_analyze_bad_inputs(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        analyze(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError):
        analyze(bad)
    with pytest.raises(ConfigError):
        analyze(42)


def test_to_csv(tmp_path):
    rows = analyze(small_net())
    to_csv(rows, tmp_path / "out" / "spectra.csv")
    with open(tmp_path / "out" / "spectra.csv", newline="") as f:
        back = list(csv.DictReader(f))
    assert [r["name"] for r in back] == ["0", "3", "6", "8"]
    assert back[0]["shape"] == "8x3x3x3"
    assert float(back[0]["alpha"]) == pytest.approx(rows[0]["alpha"])
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["spectra.csv"]


# --------------------------------------------------------------------------------------------- plots


def test_plots_write_pngs(tmp_path):
    net = small_net()
    rows = analyze(net)
    a = plot_alpha_by_depth({"run a": rows, "run b": analyze(net, xmin="ks")}, tmp_path / "alpha.png")
    lam = pareto(2000, 3.0, 1.0, seed=5)
    b = plot_esd(lam, fit_power_law(lam, "ks"), tmp_path / "esd.png", title="pareto")
    c = plot_esd(layer_spectra(net)["3"], fit_power_law(layer_spectra(net)["3"]), tmp_path / "esd3.png")
    for p in (a, b, c):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alpha.png", "esd.png", "esd3.png"]
    with pytest.raises(DataError):
        plot_alpha_by_depth({}, tmp_path / "none.png")
