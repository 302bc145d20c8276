"""Empirical NTK maths (r18lab.analysis.ntk): spec 002d §3 exact numbers and the §5 routes."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from r18lab.analysis import ntk
from r18lab.analysis.ntk import (alignment_profile, eigen_energies, eigenfunction_labels, energy_concentration,
                                 fix_signs, jacobian_rows, kernel_distance, kernel_target_alignment, memory_route,
                                 ntk_matrix, ntk_matvec, nystrom, scalar_output, top_eigen)
from r18lab.errors import ConfigError
from r18lab.models.classifier import ModelOutput, create_model

F64 = torch.float64


def tiny_conv(dtype: torch.dtype = F64) -> nn.Module:
    """Conv → BN → ReLU → pool → linear, one logit, with non-trivial BN running statistics."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(16, 1)).to(dtype)
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].weight.uniform_(0.5, 1.5)
    return net


def tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet18", num_classes=1, width=0.0625).double()


def images(n: int, size: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=F64)


def explicit_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Reference J: one torch.autograd.grad per sample, model in eval mode."""
    was = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for xi in x:
        out = scalar_output(model(xi.unsqueeze(0)))[0]
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(out, params)]))
    model.train(was)
    return torch.stack(rows)


def random_psd(n: int, seed: int) -> torch.Tensor:
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return a @ a.T


# --------------------------------------------------------------------------------------------- the function


def test_scalar_output_heads_and_shapes():
    t = torch.arange(6.0).reshape(3, 2)
    out = ModelOutput(logits={"a": t[:, :1], "b": t[:, 1:]}, features=t)
    assert torch.equal(scalar_output(out), t[:, 0])
    assert torch.equal(scalar_output(out, head="b"), t[:, 1])
    assert torch.equal(scalar_output(t[:, 1:]), t[:, 1])
    with pytest.raises(ConfigError, match="head 'c'"):
        scalar_output(out, head="c")
    with pytest.raises(ConfigError, match="num_classes: 1"):
        scalar_output(t)


def test_ten_logits_is_config_error():
    model = create_model("resnet18", num_classes=10, width=0.0625)
    with pytest.raises(ConfigError, match="num_classes: 1") as err:
        jacobian_rows(model, torch.randn(2, 3, 8, 8))
    assert "\n" not in str(err.value)


def test_head_selects_the_logit():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 1).double(), nn.Linear(3, 1).double()

        def forward(self, x):
            return ModelOutput(logits={"a": self.a(x), "b": self.b(x)}, features=x)

    torch.manual_seed(0)
    model, x = TwoHeads(), torch.randn(4, 3, dtype=F64)
    ones = torch.ones(4, 1, dtype=F64)
    zeros = torch.zeros(4, 4, dtype=F64)
    ja, jb = jacobian_rows(model, x), jacobian_rows(model, x, head="b")
    # columns: a.weight, a.bias, b.weight, b.bias
    assert torch.allclose(ja, torch.cat([x, ones, zeros], 1)) and torch.allclose(jb, torch.cat([zeros, x, ones], 1))


# --------------------------------------------------------------------------------------------- J and K


@pytest.mark.parametrize("bias", [True, False])
def test_linear_model_ntk_is_gram_of_inputs(bias):
    torch.manual_seed(0)
    model, x = nn.Linear(5, 1, bias=bias).double(), torch.randn(7, 5, dtype=F64)
    expected = x @ x.T + (1.0 if bias else 0.0)
    assert torch.allclose(ntk_matrix(model, x), expected, atol=1e-12)
    x2 = torch.randn(3, 5, dtype=F64)
    assert torch.allclose(ntk_matrix(model, x, x2), x @ x2.T + (1.0 if bias else 0.0), atol=1e-12)


@pytest.mark.parametrize("make", [tiny_conv, tiny_resnet], ids=["conv", "resnet18_w16"])
def test_jacobian_matches_explicit_autograd(make):
    model, x = make(), images(6)
    j = jacobian_rows(model, x, chunk=4)
    ref = explicit_jacobian(model, x)
    assert j.shape == (6, sum(p.numel() for p in model.parameters()))
    assert torch.allclose(j, ref, atol=1e-10, rtol=1e-8)
    k = ntk_matrix(model, x, chunk=4)
    assert torch.allclose(k, ref @ ref.T, atol=1e-9, rtol=1e-8)
    assert torch.equal(k, k.T)
    assert torch.allclose(k.diagonal(), (ref ** 2).sum(1), rtol=1e-10)
    assert torch.linalg.eigvalsh(k).min() >= -1e-9 * k.diagonal().max()


def test_bn_eval_mode_and_training_flags_restored():
    model, x = tiny_conv(), images(5)
    model.train()
    model[2].eval()  # a module with its own flag must keep it
    state = {k: v.clone() for k, v in model.state_dict().items()}
    j = jacobian_rows(model, x)
    assert model.training and model[1].training and not model[2].training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # running stats untouched
    ref_eval = explicit_jacobian(model, x)
    assert torch.allclose(j, ref_eval, atol=1e-10)
    model.train()  # train-mode (per-sample batch statistics) rows differ: the eval switch matters
    params = list(model.parameters())
    out = model(x[:1])[0, 0]
    train_row = torch.cat([g.reshape(-1) for g in torch.autograd.grad(out, params)])
    assert not torch.allclose(train_row, j[0], atol=1e-4)
    model[2].eval()
    ntk_matvec(model, x, torch.ones(5, dtype=F64))
    assert model.training and model[1].training and not model[2].training


def test_chunk_bounds_the_rows_per_call():
    model, x = tiny_conv(), images(10)
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(1))
    j4 = jacobian_rows(model, x, chunk=4)
    assert len(calls) == 3  # ⌈10 / 4⌉ vmapped forward calls
    assert torch.allclose(j4, jacobian_rows(model, x, chunk=32))


def test_params_subset_selects_columns():
    model, x = tiny_conv(), images(4)
    full = jacobian_rows(model, x)
    sub = {"5.weight": model[5].weight, "5.bias": model[5].bias}
    j = jacobian_rows(model, x, params=sub)
    assert j.shape == (4, 17)
    assert torch.allclose(j, full[:, -17:])
    with pytest.raises(ConfigError, match="named_parameters"):
        jacobian_rows(model, x, params={"nope": model[5].bias})


@pytest.mark.parametrize("cross", [False, True])
def test_blockwise_equals_dense_and_holds_block_rows(monkeypatch, cross):
    model, x, x2 = tiny_conv(), images(10), images(7, seed=2)
    dense = ntk_matrix(model, x, x2 if cross else None)
    seen = []
    real = ntk.jacobian_rows

    def spy(m, xs, **kw):
        seen.append(xs.shape[0])
        return real(m, xs, **kw)

    monkeypatch.setattr(ntk, "jacobian_rows", spy)
    blocked = ntk_matrix(model, x, x2 if cross else None, block_rows=3)
    assert max(seen) <= 3 and len(seen) > 2
    assert torch.allclose(blocked, dense, atol=1e-12)
    if not cross:
        assert torch.equal(blocked, blocked.T)
        assert sum(seen) == 3 + 3 + 3 + 1 + (3 + 3 + 1) + (3 + 1) + 1  # upper block triangle only


def test_float64_accumulation_from_float32_rows():
    model, x = tiny_conv(torch.float32), images(6).float()
    k32 = ntk_matrix(model, x)
    k64 = ntk_matrix(model, x, dtype=F64)
    j = jacobian_rows(model, x).double()
    assert k32.dtype == torch.float32 and k64.dtype == F64
    assert torch.allclose(k64, j @ j.T, rtol=1e-12)
    assert torch.allclose(ntk_matrix(model, x, block_rows=4, dtype=F64), k64, rtol=1e-12)


# --------------------------------------------------------------------------------------------- matrix-free


def test_matvec_equals_k_times_v_without_forming_j(monkeypatch):
    model, x = tiny_resnet(), images(9)
    k = ntk_matrix(model, x)
    v = torch.randn(9, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    monkeypatch.setattr(ntk, "jacobian_rows", lambda *a, **kw: pytest.fail("the matvec route formed J"))
    assert torch.allclose(ntk_matvec(model, x, v[:, 0], chunk=4), k @ v[:, 0], rtol=1e-8, atol=1e-10)
    assert torch.allclose(ntk_matvec(model, x, v, chunk=4), k @ v, rtol=1e-8, atol=1e-10)


def test_top3_eigsh_matches_eigh():
    model, x = tiny_conv(), images(12)
    k = ntk_matrix(model, x)
    lam, vecs = top_eigen(k)
    assert torch.all(lam[:-1] >= lam[1:])
    assert torch.allclose(vecs.T @ vecs, torch.eye(12, dtype=F64), atol=1e-10)
    assert torch.allclose(vecs @ torch.diag(lam) @ vecs.T, k, atol=1e-9)
    lam3, vecs3 = top_eigen(lambda v: ntk_matvec(model, x, v), 3, n=12, dtype=F64)
    assert torch.allclose(lam3, lam[:3], rtol=1e-8)
    assert torch.allclose(vecs3, vecs[:, :3], atol=1e-6)  # same sign convention on both routes
    with pytest.raises(ConfigError, match="k < n"):
        top_eigen(lambda v: v, 12, n=12)
    with pytest.raises(ConfigError, match="drop n"):
        top_eigen(k, 3, n=5)


def test_sign_convention_is_stable_under_negation():
    v = torch.tensor([[0.1, -0.6, 0.5], [-0.9, 0.2, -0.5], [0.3, 0.0, 0.1]], dtype=F64)
    fixed = fix_signs(v)
    assert torch.equal(fix_signs(-v), fixed)
    assert torch.equal(fixed[:, 0], -v[:, 0]) and torch.equal(fixed[:, 1], -v[:, 1])
    assert torch.equal(fixed[:, 2], v[:, 2])  # tie |0.5| = |−0.5|: the first entry decides
    k = random_psd(8, 0)
    _, vecs = top_eigen(k)
    assert torch.equal(fix_signs(vecs), vecs)
    assert torch.all(vecs.gather(0, vecs.abs().argmax(0, keepdim=True)) > 0)


def test_nystrom_with_all_points_reproduces_eigh():
    k = random_psd(10, 1)
    lam, vecs = top_eigen(k, 4)
    lam_n, vecs_n = nystrom(k, k, 4)
    assert torch.allclose(lam_n, lam, rtol=1e-12) and torch.allclose(vecs_n, vecs, atol=1e-10)
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    k_full = x @ x.T  # rank 4
    lam_m, u = top_eigen(k_full[:8, :8], 3)
    lam_8, vecs_8 = nystrom(k_full[:, :8], k_full[:8, :8], 3)
    assert torch.allclose(lam_8, 30 / 8 * lam_m, rtol=1e-12)  # λ ≈ (n/m)·λ^m
    assert torch.allclose(vecs_8[:8], math.sqrt(8 / 30) * u, atol=1e-10)  # on the landmarks K_mm u / λ^m = u
    with pytest.raises(ConfigError, match="fewer eigenpairs"):
        nystrom(k_full[:, :8], k_full[:8, :8], 6)


# --------------------------------------------------------------------------------------------- measures


def test_kernel_distance():
    k = random_psd(6, 0)
    for c in (0.5, 3.0):
        assert kernel_distance(k, c * k) == pytest.approx(0.0, abs=1e-12)
    for seed in range(5):
        d = kernel_distance(random_psd(6, 10 + seed), random_psd(6, 20 + seed))
        assert 0.0 < d <= 1.0
    e1, e2 = torch.diag(torch.tensor([1.0, 0.0])), torch.diag(torch.tensor([0.0, 1.0]))
    assert kernel_distance(e1, e2) == pytest.approx(1.0)
    assert kernel_distance(torch.eye(2), e1) == pytest.approx(1 - 1 / math.sqrt(2))
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 1.0]])  # cross kernels: tr(K1 K2ᵀ)
    assert kernel_distance(a, b) == pytest.approx(1 - 4 / 5)
    with pytest.raises(ConfigError):
        kernel_distance(torch.eye(2), torch.eye(3))


def test_kernel_target_alignment():
    y = torch.tensor([1.0, -1.0, 1.0, 1.0])
    assert kernel_target_alignment(torch.outer(y, y), y) == pytest.approx(1.0)
    assert kernel_target_alignment(torch.eye(4), y) == pytest.approx(1 / math.sqrt(4))
    k = random_psd(4, 3)
    expected = float(y.double() @ k @ y.double() / (torch.linalg.norm(k) * 4))
    assert kernel_target_alignment(k, y) == pytest.approx(expected)
    assert kernel_target_alignment(k, (y + 1) / 2) == pytest.approx(expected)  # {0, 1} labels map to ±1
    with pytest.raises(ConfigError, match="binary"):
        kernel_target_alignment(k, torch.tensor([0.0, 1.0, 2.0, 1.0]))


def test_energy_concentration_peaks_at_own_index():
    model, x = tiny_conv(), images(24)
    _, vecs = top_eigen(ntk_matrix(model, x))
    for j in (1, 3, 5):
        y = eigenfunction_labels(vecs, j)
        per = eigen_energies(vecs, y)
        assert int(per.argmax()) == j
        curve = energy_concentration(vecs, y, range(1, 25))
        assert int(curve.diff().argmax()) + 1 == j  # the largest jump of E_k is at k = j + 1 (0-based j)
        assert curve[-1] == pytest.approx(1.0)  # a full orthonormal basis keeps all the energy
    y = eigenfunction_labels(vecs, 3)
    e = energy_concentration(vecs, y, [1, 4, 10])
    assert torch.allclose(energy_concentration(vecs, y, [1, 4, 10], squared=False), e.sqrt())
    assert torch.all(e.diff() >= 0)
    phi = vecs[:, 2]
    assert torch.allclose(energy_concentration(vecs, phi, [2, 3], binary=False), torch.tensor([0.0, 1.0], dtype=F64),
                          atol=1e-12)
    with pytest.raises(ConfigError, match="ks"):
        energy_concentration(vecs, y, [0])


def test_alignment_profile():
    model, x = tiny_conv(), images(10)
    k0 = ntk_matrix(model, x)
    lam, vecs = top_eigen(k0)
    assert torch.allclose(alignment_profile(k0, vecs), lam, rtol=1e-10)
    assert torch.allclose(alignment_profile(k0, 3 * vecs[:, :4]), lam[:4], rtol=1e-10)  # divided by ‖v‖²
    k_end = random_psd(10, 5)
    expected = torch.stack([vecs[:, i] @ k_end @ vecs[:, i] for i in range(10)])
    assert torch.allclose(alignment_profile(k_end, vecs), expected)
    assert not torch.allclose(expected, lam)
    matvec = alignment_profile(lambda v: ntk_matvec(model, x, v), vecs[:, :3])
    assert torch.allclose(matvec, lam[:3], rtol=1e-8)


def test_eigenfunction_labels():
    phi = torch.tensor([[0.5, 0.0], [0.0, 1.0], [-0.2, 0.0], [0.1, 0.0]], dtype=F64)
    labels = eigenfunction_labels(phi, 0)
    assert labels.dtype == torch.long and labels.tolist() == [1, 0, 0, 1]  # φ = 0 → 0
    assert torch.equal(eigenfunction_labels(-phi, 0), labels)  # sign convention before binarising
    assert eigenfunction_labels(phi, 1).tolist() == [0, 1, 0, 0]
    with pytest.raises(ConfigError, match="0-based"):
        eigenfunction_labels(phi, 2)


# --------------------------------------------------------------------------------------------- memory


def test_memory_route_spec_numbers():
    p = 11_168_832 + 513
    r = memory_route(1000, p, 23e9)
    assert r["jacobian_bytes"] == 1000 * p * 4
    assert round(r["jacobian_bytes"] / 1e9, 1) == 44.7
    assert r["route"] == "blockwise" and r["bytes"]["dense"] > 23e9
    m = r["max_n_dense"]
    assert m * p * 4 + m * m * 4 <= 23e9 < (m + 1) * p * 4 + (m + 1) ** 2 * 4
    assert r["block_rows"] == int((23e9 - 4e6) // (2 * p * 4))
    assert "44.7 GB" in r["message"] and f"n ≤ {m:,}" in r["message"]
    eighth = memory_route(1000, 176_000, 23e9)
    assert eighth["route"] == "dense" and round(eighth["jacobian_bytes"] / 1e9, 2) == 0.70
    assert memory_route(60_000, 176_000, 8e9)["route"] == "matrix-free"  # K alone is 14.4 GB
    assert memory_route(1000, p, 23e9, dtype_bytes=8)["jacobian_bytes"] == 2 * r["jacobian_bytes"]
    with pytest.raises(ConfigError, match="fewer points"):
        memory_route(1000, p, 1e6)
