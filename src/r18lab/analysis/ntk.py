"""Empirical neural tangent kernel of one-logit models (Ortiz-Jiménez et al., NeurIPS 2021; spec 002d §1, §5).

Θ(x, x') = J(x)·J(x')ᵀ with J(x) = ∂f(x; θ)/∂θ over all trainable parameters (neural-tangents
`empirical_kernel_fn(implementation=1, trace_axes=())` in the authors' `neural_kernels/ntk.py`).

Conventions:

* f is evaluated **per sample with BatchNorm (and dropout) in eval mode**: in train mode BN couples the samples of
  a batch and the kernel is not a per-sample NTK (spec §5). Every function that calls the model switches it to
  eval mode and restores each module's own `training` flag afterwards.
* A Jacobian row is flattened in `named_parameters()` order (or the order of the `params` dict given).
* Three routes (spec §5 memory): **dense** (J of all n rows in memory, K = J Jᵀ), **blockwise** (K built from
  row blocks of J, the column blocks recomputed per block), **matrix-free** (K v = J(Jᵀ v) by one vjp and one jvp,
  top eigenpairs by Lanczos). `memory_route` picks one from the bytes each needs.
* Eigenvectors are columns, eigenvalues descending, signs fixed so that the entry of largest magnitude is positive
  (the first such entry on ties) — a convention invariant under negating a vector, so eigenfunction labels do not
  flip between runs (spec §5 "Determinism").
* Indices of eigenvectors (`eigenfunction_labels(eigvecs, j)`) are 0-based columns, as in the authors' `train_ntk.py`
  (`eigvecs[label_idx]` after sorting descending).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from ..errors import ConfigError
from .nets import eval_mode  # noqa: F401  (public here too)

Matvec = Callable[[Tensor], Tensor]
GB = 1e9                       # decimal gigabytes, as the spec's memory numbers (44.7 GB = 11.17 M · 1,000 · 4 B)
_GRAM_COLUMNS = 1 << 16        # parameter columns cast at once when K accumulates in a wider dtype than J
_LANCZOS_MIN_NCV = 20          # scipy eigsh's default ncv = max(2k + 1, 20): Lanczos vectors kept


# ------------------------------------------------------------------------------------------------ the function


def scalar_output(model_output: Any, head: str | None = None) -> Tensor:
    """The model's one logit per sample, shape (N,): `model_output.logits[head]` (first key by default) or a tensor."""
    logits = getattr(model_output, "logits", model_output)
    if isinstance(logits, Mapping):
        if not logits:
            raise ConfigError("the model returned no logits; give it a head (heads: [main])")
        key = next(iter(logits)) if head is None else head
        if key not in logits:
            raise ConfigError(f"head {key!r} is not among the model's logits {list(logits)}; pass one of them as head")
        logits = logits[key]
    elif head is not None:
        raise ConfigError(f"head {head!r} given but the model returns a plain tensor; drop head")
    if not isinstance(logits, Tensor):
        raise ConfigError(f"the model returned {type(logits).__name__}, not logits; use an r18lab model or a module "
                          "returning an (N, 1) tensor")
    if logits.ndim == 2 and logits.shape[1] == 1:
        return logits[:, 0]
    if logits.ndim == 1:
        return logits
    raise ConfigError(f"the NTK here is for one-logit models but the model gives {tuple(logits.shape[1:])} logits "
                      "per sample; build it with num_classes: 1")


def trainable_params(model: nn.Module) -> dict[str, Tensor]:
    """θ: the model's parameters with requires_grad, detached, in `named_parameters()` order."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _setup(model: nn.Module, x: Tensor, params: Mapping[str, Tensor] | None) -> tuple[dict, dict, Tensor]:
    """(params, buffers, x on the params' device) for `functional_call`."""
    params = trainable_params(model) if params is None else {n: p.detach() for n, p in params.items()}
    if not params:
        raise ConfigError("no trainable parameters to differentiate; pass params or unfreeze the model")
    names = dict(model.named_parameters())
    unknown = [n for n in params if n not in names]
    if unknown:
        raise ConfigError(f"params {unknown[:3]} are not parameters of the model; use names from named_parameters()")
    buffers = dict(model.named_buffers())
    device = next(iter(params.values())).device
    return params, buffers, x.to(device)


def _check_chunk(name: str, value: int) -> None:
    if int(value) != value or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def parameter_count(model: nn.Module, params: Mapping[str, Tensor] | None = None) -> int:
    """P: the number of entries of a Jacobian row (all trainable parameters, or those of `params`)."""
    source = trainable_params(model) if params is None else params
    return sum(p.numel() for p in source.values())


# ------------------------------------------------------------------------------------------------ J and K


def jacobian_rows(model: nn.Module, x: Tensor, chunk: int = 32, params: Mapping[str, Tensor] | None = None,
                  head: str | None = None) -> Tensor:
    """J ∈ ℝ^{N×P}, row i = ∂f(x_i; θ)/∂θ (per-sample gradients, eval-mode BN): vmap(grad(f)) over chunks of x."""
    _check_chunk("chunk", chunk)
    params, buffers, x = _setup(model, x, params)
    names = list(params)

    def f_single(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        return scalar_output(functional_call(model, (p, buffers), (xi.unsqueeze(0),)), head)[0]

    per_sample = vmap(grad(f_single), in_dims=(None, 0))
    first = params[names[0]]
    out = torch.empty(x.shape[0], sum(p.numel() for p in params.values()), dtype=first.dtype, device=first.device)
    with eval_mode(model):
        for start in range(0, x.shape[0], chunk):
            g = per_sample(params, x[start:start + chunk])
            col = 0
            for n in names:
                block = g[n].reshape(g[n].shape[0], -1)
                out[start:start + block.shape[0], col:col + block.shape[1]] = block
                col += block.shape[1]
    return out


def _gram(a: Tensor, b: Tensor, dtype: torch.dtype) -> Tensor:
    """a bᵀ accumulated in `dtype`; when that is wider than a's, the cast is done over column slices (small copies)."""
    if a.dtype == dtype and b.dtype == dtype:
        return a @ b.T
    out = torch.zeros(a.shape[0], b.shape[0], dtype=dtype, device=a.device)
    for s in range(0, a.shape[1], _GRAM_COLUMNS):
        out += a[:, s:s + _GRAM_COLUMNS].to(dtype) @ b[:, s:s + _GRAM_COLUMNS].to(dtype).T
    return out


def ntk_matrix(model: nn.Module, x: Tensor, x2: Tensor | None = None, chunk: int = 32, block_rows: int | None = None,
               dtype: torch.dtype | None = None, params: Mapping[str, Tensor] | None = None,
               head: str | None = None) -> Tensor:
    """K = J(x) J(x2)ᵀ (x2 = x by default) — Θ(x, x') = J(x)·J(x')ᵀ (neural-tangents empirical NTK, spec §1).

    `block_rows=None`: dense, J of x (and of x2) computed once. `block_rows=B`: at most 2·B rows of J in memory at
    once (a row block and a column block); with x2 = None only the upper block triangle is computed and mirrored,
    so K is exactly symmetric (Jacobian rows computed ≈ n·(n/B + 1)/2). `dtype` is K's dtype (float64 accumulation:
    the cast is done per slice of parameters, never on all of J); default J's dtype.
    """
    kw = dict(chunk=chunk, params=params, head=head)
    if block_rows is None:
        j1 = jacobian_rows(model, x, **kw)
        j2 = j1 if x2 is None else jacobian_rows(model, x2, **kw)
        k = _gram(j1, j2, dtype or j1.dtype)
        return (k + k.T) / 2 if x2 is None else k
    _check_chunk("block_rows", block_rows)
    symmetric = x2 is None
    other = x if symmetric else x2
    n1, n2 = x.shape[0], other.shape[0]
    k: Tensor | None = None
    for a in range(0, n1, block_rows):
        ja = jacobian_rows(model, x[a:a + block_rows], **kw)
        if k is None:
            k = torch.empty(n1, n2, dtype=dtype or ja.dtype, device=ja.device)
        for b in range(a if symmetric else 0, n2, block_rows):
            if symmetric and b == a:
                blk = _gram(ja, ja, k.dtype)
                k[a:a + block_rows, a:a + block_rows] = (blk + blk.T) / 2
                continue
            blk = _gram(ja, jacobian_rows(model, other[b:b + block_rows], **kw), k.dtype)
            k[a:a + block_rows, b:b + block_rows] = blk
            if symmetric:
                k[b:b + block_rows, a:a + block_rows] = blk.T
    assert k is not None
    return k


def ntk_matvec(model: nn.Module, x: Tensor, v: Tensor, chunk: int = 128, params: Mapping[str, Tensor] | None = None,
               head: str | None = None) -> Tensor:
    """K v = J (Jᵀ v) without J: u = Jᵀ v by one vjp over all N points, then J u by one jvp (spec §5 matrix-free).

    `v` is (N,) or (N, k) (k columns, each its own vjp/jvp); x is processed `chunk` points at a time (Jᵀ v summed
    over chunks), so memory is P floats plus one chunk's activations.
    """
    _check_chunk("chunk", chunk)
    params, buffers, x = _setup(model, x, params)
    if v.shape[0] != x.shape[0] or v.ndim not in (1, 2):
        raise ConfigError(f"v must be (N,) or (N, k) with N = {x.shape[0]} points, got {tuple(v.shape)}")
    first = next(iter(params.values()))
    cols = v.to(first.device, first.dtype).reshape(x.shape[0], -1)
    starts = range(0, x.shape[0], chunk)

    def f_batch(xc: Tensor) -> Callable[[dict[str, Tensor]], Tensor]:
        return lambda p: scalar_output(functional_call(model, (p, buffers), (xc,)), head)

    out = torch.empty_like(cols)
    with eval_mode(model):
        us = [{n: torch.zeros_like(p) for n, p in params.items()} for _ in range(cols.shape[1])]
        for s in starts:
            _, pullback = vjp(f_batch(x[s:s + chunk]), params)
            for c, u in enumerate(us):
                (g,) = pullback(cols[s:s + chunk, c])
                for n in u:
                    u[n] += g[n]
        for s in starts:
            for c, u in enumerate(us):
                _, tangent = jvp(f_batch(x[s:s + chunk]), (params,), (u,))
                out[s:s + chunk, c] = tangent
    return out.reshape(v.shape)


# ------------------------------------------------------------------------------------------------ eigenpairs


def fix_signs(eigvecs: Tensor) -> Tensor:
    """Flip each column so its entry of largest magnitude (the first one on ties) is positive; −v maps to the same."""
    vecs = eigvecs if eigvecs.ndim == 2 else eigvecs.unsqueeze(1)
    idx = vecs.abs().argmax(dim=0, keepdim=True)
    sign = torch.where(vecs.gather(0, idx) < 0, -1.0, 1.0).to(vecs.dtype)
    return (vecs * sign).reshape(eigvecs.shape)


def top_eigen(kernel: Tensor | Matvec, k: int | None = None, n: int | None = None, *, tol: float = 0.0,
              seed: int = 0, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Top-k eigenpairs (λ descending, float64; eigenvectors as sign-fixed orthonormal columns, n × k).

    Dense K: `torch.linalg.eigh` in float64 on K's device (k = None: all n). A matvec v ↦ K v (`n` required; it
    receives `dtype` tensors of shape (n,) on `device`): `scipy.sparse.linalg.eigsh` on a `LinearOperator` — scipy
    because it wraps ARPACK's implicitly restarted Lanczos, maintained and robust where a hand-written Lanczos
    loses orthogonality; `which="LA"` (K is PSD), start vector from `seed` so runs repeat.
    """
    if isinstance(kernel, Tensor):
        if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
            raise ConfigError(f"K must be a square matrix, got shape {tuple(kernel.shape)}")
        size = kernel.shape[0]
        if n is not None and n != size:
            raise ConfigError(f"n = {n} but K is {size} × {size}; drop n for a dense K")
        k = size if k is None else k
        if not 1 <= k <= size:
            raise ConfigError(f"k must be in [1, {size}], got {k}")
        evals, evecs = torch.linalg.eigh(kernel.to(torch.float64))
        return evals.flip(0)[:k], fix_signs(evecs.flip(1)[:, :k])
    import numpy as np
    from scipy.sparse.linalg import LinearOperator, eigsh

    if n is None or k is None:
        raise ConfigError("the matrix-free route needs n (points) and k (eigenpairs); pass both")
    if not 1 <= k < n:
        raise ConfigError(f"Lanczos (eigsh) needs 1 ≤ k < n = {n}, got k = {k}; use a dense K for all eigenpairs")

    def apply(vec: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(vec, dtype=np.float64).reshape(n)).to(device, dtype)
        return kernel(t).detach().to("cpu", torch.float64).numpy()

    op = LinearOperator((n, n), matvec=apply, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(n)
    evals, evecs = eigsh(op, k=k, which="LA", tol=tol, v0=v0)
    order = np.argsort(evals)[::-1].copy()
    return torch.from_numpy(evals[order].copy()), fix_signs(torch.from_numpy(evecs[:, order].copy()))


def nystrom(k_nm: Tensor, k_mm: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Nyström eigenpairs from m landmarks: λ_j ≈ (n/m)·λ_j^m, φ_j ≈ √(m/n)·K_nm u_j / λ_j^m (authors' ntk.py)."""
    n, m = k_nm.shape
    if k_mm.shape != (m, m):
        raise ConfigError(f"K_mm must be {m} × {m} to match K_nm {n} × {m}, got {tuple(k_mm.shape)}")
    lam_m, u = top_eigen(k_mm, k)
    if lam_m[-1] <= lam_m[0] * torch.finfo(k_mm.dtype).eps * m:
        raise ConfigError(f"K_mm has fewer than k = {k} clearly positive eigenvalues; ask for fewer eigenpairs")
    phi = math.sqrt(m / n) * (k_nm.to(torch.float64) @ u) / lam_m
    return (n / m) * lam_m, fix_signs(phi)


# ------------------------------------------------------------------------------------------------ measures


def kernel_distance(k1: Tensor, k2: Tensor) -> float:
    """d(K1, K2) = 1 − tr(K1 K2ᵀ) / (‖K1‖_F ‖K2‖_F) (authors' utils/misc.kernel_cos_dist); in [0, 1] for PSD K."""
    if k1.shape != k2.shape:
        raise ConfigError(f"kernels must have the same shape, got {tuple(k1.shape)} and {tuple(k2.shape)}")
    a, b = k1.to(torch.float64), k2.to(torch.float64)
    norms = torch.linalg.norm(a) * torch.linalg.norm(b)
    if norms == 0:
        raise ConfigError("a kernel is all zeros, so the distance is undefined; check the model's parameters")
    return float(1.0 - (a * b).sum() / norms)


def signed_labels(y: Tensor) -> Tensor:
    """Binary labels as ±1 float64: {0, 1} maps to {−1, +1} (0 → −1); {−1, +1} is kept."""
    y = y.reshape(-1).to(torch.float64)
    if ((y == 0) | (y == 1)).all():
        return 2 * y - 1
    if ((y == -1) | (y == 1)).all():
        return y
    raise ConfigError("labels must be binary, in {0, 1} or {-1, +1}; binarise them first (e.g. eigenfunction_labels)")


def kernel_target_alignment(k: Tensor, y: Tensor) -> float:
    """A(K, y) = yᵀ K y / (‖K‖_F ‖y‖²), y ∈ {±1}ⁿ (Cristianini et al. 2001); {0, 1} labels are mapped to ±1."""
    y = signed_labels(y).to(k.device)
    if k.shape != (y.shape[0], y.shape[0]):
        raise ConfigError(f"K is {tuple(k.shape)} but there are {y.shape[0]} labels; use K on the labelled points")
    kk = k.to(torch.float64)
    norm = torch.linalg.norm(kk)
    if norm == 0:
        raise ConfigError("the kernel is all zeros, so the alignment is undefined; check the model's parameters")
    return float(y @ kk @ y / (norm * (y @ y)))


def eigen_energies(eigvecs: Tensor, y: Tensor, binary: bool = True) -> Tensor:
    """(φ_jᵀ y)² / ‖y‖² per eigenvector j (float64); with `binary`, y are labels mapped to ±1 (`signed_labels`)."""
    y = signed_labels(y) if binary else y.reshape(-1).to(torch.float64)
    if eigvecs.ndim != 2 or eigvecs.shape[0] != y.shape[0]:
        raise ConfigError(f"eigvecs must be (n, k) with n = {y.shape[0]} targets, got {tuple(eigvecs.shape)}")
    norm2 = y @ y
    if norm2 == 0:
        raise ConfigError("the target vector is zero; pass non-zero targets")
    return (eigvecs.to(torch.float64).T @ y.to(eigvecs.device)) ** 2 / norm2


def energy_concentration(eigvecs: Tensor, y: Tensor, ks: Sequence[int], squared: bool = True,
                         binary: bool = True) -> Tensor:
    """E_k(y) = ‖Φ_kᵀ y‖² / ‖y‖², Φ_k = the top-k orthonormal eigenvectors, for each k (spec §1, a reading, flagged).

    `squared=False` gives ‖Φ_kᵀ y‖ / ‖y‖ (the third-party `align` repo's form). `binary`: y are {0,1}/{±1} labels
    mapped to ±1; `binary=False` takes y as real targets."""
    total = eigvecs.shape[1] if eigvecs.ndim == 2 else 0
    bad = [kk for kk in ks if not (int(kk) == kk and 1 <= kk <= total)]
    if bad:
        raise ConfigError(f"ks must be integers in [1, {total}] (the eigenvectors given), got {bad}")
    cum = eigen_energies(eigvecs, y, binary).cumsum(0)
    e = cum[torch.as_tensor([int(kk) - 1 for kk in ks], device=cum.device, dtype=torch.long)]
    return e if squared else e.sqrt()


def alignment_profile(kernel_end: Tensor | Matvec, eigvecs0: Tensor) -> Tensor:
    """a_j = v_jᵀ K_end v_j / ‖v_j‖² for each column v_j (authors' get_ntk_alignment_fn); = λ_j when K_end = K0.

    `kernel_end` is K_end or a matvec that accepts an (n, k) block (e.g. `lambda v: ntk_matvec(model, x, v)`)."""
    if eigvecs0.ndim != 2:
        raise ConfigError(f"eigvecs0 must be (n, k) columns, got shape {tuple(eigvecs0.shape)}")
    if isinstance(kernel_end, Tensor):
        if kernel_end.shape != (eigvecs0.shape[0], eigvecs0.shape[0]):
            raise ConfigError(f"K_end is {tuple(kernel_end.shape)} but the eigenvectors have {eigvecs0.shape[0]} "
                              "entries; use both on the same points")
        kv = kernel_end @ eigvecs0.to(kernel_end.dtype)
    else:
        kv = kernel_end(eigvecs0)
    v = eigvecs0.to(torch.float64)
    return (v * kv.to(v.device, torch.float64)).sum(0) / (v * v).sum(0)


def eigenfunction_labels(eigvecs: Tensor, j: int) -> Tensor:
    """Task labels (sign(φ_j) + 1) // 2 ∈ {0, 1} (φ_j = 0 → 0; authors' train_ntk.py) of column j (0-based),
    after the sign convention of `fix_signs`, so a flipped eigenvector gives the same task."""
    vecs = eigvecs if eigvecs.ndim == 2 else eigvecs.unsqueeze(1)
    if not 0 <= j < vecs.shape[1]:
        raise ConfigError(f"eigenvector index j must be in [0, {vecs.shape[1] - 1}] (0-based), got {j}")
    phi = fix_signs(vecs[:, j])
    return torch.div(torch.sign(phi) + 1, 2, rounding_mode="floor").to(torch.long)


# ------------------------------------------------------------------------------------------------ memory


def _fmt(nbytes: float) -> str:
    return f"{nbytes / GB:.3g} GB" if nbytes >= 0.1 * GB else f"{nbytes / 1e6:.3g} MB"


def memory_route(n: int, num_params: int, free_bytes: float, dtype_bytes: int = 4, k: int = 10) -> dict[str, Any]:
    """Route for the n × n NTK of a P-parameter model within `free_bytes` (spec §5): dense if J and K fit
    (n·P·b + n²·b), else blockwise (2·B·P·b + n²·b for the largest B ≥ 1 rows per block), else matrix-free
    (≈ 4·P·b for θ, Jᵀv and the tangent + max(2k+1, 20)·n·8 B of Lanczos vectors; top-k eigenpairs only).
    Activations of one chunk are not counted."""
    for name, value in (("n", n), ("num_params", num_params), ("dtype_bytes", dtype_bytes), ("k", k)):
        if int(value) != value or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not free_bytes > 0:
        raise ConfigError(f"free_bytes must be > 0, got {free_bytes!r}")
    p, b = num_params, dtype_bytes
    jac, ker = n * p * b, n * n * b
    dense = jac + ker
    max_n = int((-p + math.sqrt(p * p + 4 * free_bytes / b)) / 2)  # largest n with n·P·b + n²·b ≤ budget
    while max_n > 0 and max_n * p * b + max_n * max_n * b > free_bytes:
        max_n -= 1
    block = max(0, min(n, int((free_bytes - ker) // (2 * p * b)))) if free_bytes > ker else 0
    blockwise = 2 * block * p * b + ker if block else 2 * p * b + ker
    matrix_free = 4 * p * b + max(2 * k + 1, _LANCZOS_MIN_NCV) * n * 8
    if dense <= free_bytes:
        route = "dense"
    elif block >= 1:
        route = "blockwise"
    elif matrix_free <= free_bytes:
        route = "matrix-free"
    else:
        raise ConfigError(f"the NTK of n = {n} points needs {_fmt(matrix_free)} even matrix-free but {_fmt(free_bytes)}"
                          " is free; use fewer points or a device with more memory")
    recompute = (n / block + 1) / 2 if block else math.inf
    message = (f"J needs {_fmt(jac)} (n = {n:,} × P = {p:,} × {b} B) and K {_fmt(ker)}; {_fmt(free_bytes)} free: "
               f"{route}" + (f" (dense fits with n ≤ {max_n:,})" if route != "dense" else "")
               + (f", block_rows = {block}" if route == "blockwise" else ""))
    return {"route": route, "bytes": {"dense": dense, "blockwise": blockwise, "matrix-free": matrix_free},
            "jacobian_bytes": jac, "kernel_bytes": ker, "max_n_dense": max_n, "block_rows": block,
            "recompute_factor": recompute, "message": message}
