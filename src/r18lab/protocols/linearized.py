"""Networks vs their linearisations (paper 002, fourth work; spec 002d §2 P1, P2, P4 and §4 L1–L5).

Waves: (1) CIFAR2, every architecture × {nn, lin} × seed, the NN runs with the `ntk_probe` hook (kernel distance,
alignment and energy during training; L1, L3); then, per seed, the NTK of the eigen-architecture at θ0 — built exactly
as that seed's runs build it — on n_train + n_test CIFAR-10 images, all eigenpairs saved as eigen.npz; (2) the
eigenfunction tasks φ_j for every index, {nn, lin} × seed (L2); then the end-of-training alignment profile of the NN
trained on each `rotation` index (L4); (3) for the `pretrained` index, the linearisations "w/o bias" at θ0 and at the
trained NN's θ_end with BN statistics reset to θ0's (L5). Runs are shared by identity (a rerun skips what is done);
the kernels and profiles are cached under the protocol folder. Reported by `linearized_report`."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import torch
from pydantic import Field

from ..atomic import atomic_write_bytes, atomic_write_text
from ..config import Strict, _deep_merge, build_config, config_dict, run_identity
from ..errors import ConfigError
from ..registry import PROTOCOLS
from .base import Protocol, RunContext, validate_settings
from .spec import RunSpec

MODELS = ("nn", "lin")
LINEARIZE = {"name": "linearize"}


class Cifar2Settings(Strict):
    """P1/L1: CIFAR2 on a class-balanced pool of `labels` training images and `test_size` test images."""

    labels: int | None = Field(2000, ge=2)
    test_size: int | None = Field(2000, ge=2)
    epochs: int = Field(30, ge=1)
    architectures: list[str] | None = None  # None: every architecture


class EigenSettings(Strict):
    """P2/L2: the NTK of `architecture` at θ0 on n_train + n_test images, tasks from the signs of φ_j."""

    architecture: str
    n_train: int = Field(1000, ge=2)
    n_test: int = Field(500, ge=1)
    indices: list[int] = [1, 4, 16, 64, 256]  # 0 = the largest eigenvalue (the authors' label_idx)
    epochs: int = Field(20, ge=1)
    chunk: int = Field(32, ge=1)
    rotation: list[int] = [16]  # L4: end alignment profiles of the NN trained on these indices
    pretrained: int | None = 16  # L5: linearisations at θ0 and θ_end on this index (None: skip)


class LinearizedSettings(Strict):
    """architectures: name → model overlay (e.g. {name: resnet18, width: 0.125, options: {zero_init_residual:
    true}}); models: which of nn (the network) and lin (its linearisation at θ0) to train; probe: `ntk_probe`
    hook options for the CIFAR2 NN runs (null: no probe); cifar2 / eigen: the two task families (null: skip)."""

    architectures: dict[str, dict[str, Any]]
    seeds: list[int] = [0, 1, 2]
    models: list[Literal["nn", "lin"]] = ["nn", "lin"]
    cifar2: Cifar2Settings | None = Cifar2Settings()
    probe: dict[str, Any] | None = {"size": 256, "epochs": [0, 1, 2, 5, 10, 30]}
    eigen: EigenSettings | None = None


def parse_settings(tree: dict) -> tuple[LinearizedSettings, dict]:
    tree = copy.deepcopy(tree)
    settings = validate_settings(LinearizedSettings, tree.pop("protocol", {}) or {})
    if not settings.architectures:
        raise ConfigError("protocol.architectures is empty; name at least one, e.g. {resnet18: {name: resnet18}}")
    if not settings.seeds or len(set(settings.seeds)) != len(settings.seeds):
        raise ConfigError(f"protocol.seeds must be distinct and non-empty, got {settings.seeds}")
    for name, overlay in settings.architectures.items():
        if not isinstance(overlay, dict):
            raise ConfigError(f"protocol.architectures.{name} must be a model section, e.g. {{name: resnet18}}")
        if any((t if isinstance(t, str) else t.get("name")) == "linearize" for t in overlay.get("transforms", [])):
            raise ConfigError(f"protocol.architectures.{name} holds linearize; the protocol adds it to the lin runs")
    chosen = (settings.cifar2.architectures or []) if settings.cifar2 else []
    if settings.eigen:
        chosen = [*chosen, settings.eigen.architecture]
        e = settings.eigen
        if any(j < 0 or j >= e.n_train + e.n_test for j in [*e.indices, *e.rotation]):
            raise ConfigError(f"protocol.eigen indices must lie in 0–{e.n_train + e.n_test - 1} (one eigenvector per "
                              "point); pick smaller indices or more points")
        if any(j not in e.indices for j in e.rotation) or (e.pretrained is not None and e.pretrained not in e.indices):
            raise ConfigError("protocol.eigen.rotation and eigen.pretrained must be among eigen.indices")
    unknown = [a for a in chosen if a not in settings.architectures]
    if unknown:
        raise ConfigError(f"protocol names architecture {unknown[0]!r}, not in protocol.architectures "
                          f"({', '.join(settings.architectures)})")
    if settings.cifar2 is None and settings.eigen is None:
        raise ConfigError("protocol.cifar2 and protocol.eigen are both null; nothing to run")
    build_config(tree)
    return settings, tree


def save_npy(path: Path, array: np.ndarray) -> None:
    """A .npy file written atomically (no pickle)."""
    import io
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def _run_tree(base: dict, arch: dict, model: str, seed: int, task: Any, data: dict, epochs: int,
              linearize: dict | None = None, hooks: list | None = None) -> dict:
    """One run's config tree: base ← architecture ← task/data ← linearize (for lin) ← seed."""
    model_section = copy.deepcopy(arch)
    if model == "lin":
        model_section["transforms"] = [*model_section.get("transforms", []), {**LINEARIZE, **(linearize or {})}]
    overlay = {"model": model_section, "data": {**data, "task": task}, "train": {"epochs": epochs}, "seed": seed}
    tree = _deep_merge(base, overlay)
    if model == "lin":  # the linear runs probe nothing: their kernel is constant
        tree["hooks"] = [h for h in tree.get("hooks", []) if (h if isinstance(h, str) else h["name"]) != "ntk_probe"]
    if hooks:
        tree["hooks"] = [*tree.get("hooks", []), *hooks]
    return config_dict(build_config(tree))


class Linearized(Protocol):
    """NN vs linearised model on CIFAR2 and NTK eigenfunction tasks, with kernel dynamics, end alignment profiles
    and linearisations at the trained weights (paper 002, fourth work)"""

    def __init__(self, name: str, tree: dict, out: Path) -> None:
        self.name, self.out = name, Path(out)
        self.settings, self.base = parse_settings(tree)
        self.specs: list[RunSpec] = []

    # -- planning -------------------------------------------------------------------------------------------
    def _spec(self, family: str, arch: str, model: str, seed: int, cfg: dict, **tags: Any) -> RunSpec:
        identity = run_identity(build_config(cfg), {})
        key = "/".join(str(v) for v in (family, arch, *tags.values(), model, f"seed{seed}"))
        spec = RunSpec(f"{self.name}/{key}/{identity}", cfg, self.out / family / arch /
                       "/".join(str(v) for v in tags.values()) / model / f"seed{seed}-{identity[:8]}",
                       {"family": family, "arch": arch, "model": model, "seed": seed, **tags}, identity=identity)
        self.specs.append(spec)
        return spec

    def cifar2_specs(self) -> list[RunSpec]:
        s, c = self.settings, self.settings.cifar2
        data = {"labels": c.labels, "test_size": c.test_size}
        probe = [{"name": "ntk_probe", **s.probe}] if s.probe is not None else []
        out = []
        for arch in c.architectures or list(s.architectures):
            for seed in s.seeds:
                for model in s.models:
                    cfg = _run_tree(self.base, s.architectures[arch], model, seed, "cifar2", data, c.epochs,
                                    hooks=probe if model == "nn" else None)
                    out.append(self._spec("cifar2", arch, model, seed, cfg))
        return out

    def eigen_specs(self, seed: int, eigen_file: Path, indices: list[int], models: list[str],
                    linearize: dict | None = None, label: str = "") -> list[RunSpec]:
        e = self.settings.eigen
        out = []
        for j in indices:
            task = {"name": "eigenfunction", "file": str(eigen_file), "index": j}
            for model in models:
                cfg = _run_tree(self.base, self.settings.architectures[e.architecture], model, seed, task, {},
                                e.epochs, linearize=linearize)
                out.append(self._spec("eigen", e.architecture, label or model, seed, cfg, index=j))
        return out

    # -- waves ----------------------------------------------------------------------------------------------
    def waves(self, ctx: RunContext) -> Iterator[list[RunSpec]]:
        s, e = self.settings, self.settings.eigen
        if s.cifar2 is not None:
            yield self.cifar2_specs()
        if e is None:
            return
        files = {seed: self.eigen_file(seed) for seed in s.seeds}
        wave = [spec for seed in s.seeds for spec in self.eigen_specs(seed, files[seed], e.indices, s.models)]
        yield wave
        for spec in wave:
            if spec.tags["model"] == "nn" and spec.tags["index"] in e.rotation and spec.run_id in ctx.done:
                self.end_profile(spec, files[spec.tags["seed"]])
        if e.pretrained is None:
            return
        late = []
        for seed in s.seeds:
            nn_run = next(x for x in wave if x.tags["seed"] == seed and x.tags["index"] == e.pretrained
                          and x.tags["model"] == "nn")
            if nn_run.run_id not in ctx.done:
                continue
            late += self.eigen_specs(seed, files[seed], [e.pretrained], ["lin"],
                                     {"bias": "without"}, label="lin0-nobias")
            late += self.eigen_specs(seed, files[seed], [e.pretrained], ["lin"],
                                     {"bias": "without", "reference": str(nn_run.out_dir / "model.safetensors"),
                                      "reference_bn": "init"}, label="linend-nobias")
        yield late

    # -- kernels --------------------------------------------------------------------------------------------
    def _eigen_run_config(self, seed: int) -> Any:
        e = self.settings.eigen
        tree = _deep_merge(self.base, {"model": self.settings.architectures[e.architecture], "seed": seed})
        return build_config(tree)

    def _points(self, seed: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray, Any]:
        """The n_train + n_test images (normalised as the runs normalise them), their indices and the data."""
        from ..data.loading import load
        from ..data.splits import nested_pools
        from ..data.training import run_preprocessing, source_options

        cfg, e = self._eigen_run_config(seed), self.settings.eigen
        d = cfg.data
        opts = source_options(d)
        train, test = load(d.source, split=d.train_split, **opts), load(d.source, split=d.test_split, **opts)
        for n, ds, what in ((e.n_train, train, "n_train"), (e.n_test, test, "n_test")):
            if n > len(ds):
                raise ConfigError(f"protocol.eigen.{what}={n} exceeds the {len(ds)} images of the split")
        tr = np.sort(nested_pools(train.labels, [e.n_train], seed=seed)[0])
        te = np.sort(nested_pools(test.labels, [e.n_test], seed=seed + 999)[0])
        pre = run_preprocessing(d.normalize, train, train.classes)  # exactly what the runs normalise with
        images = np.concatenate([train.images[tr], test.images[te]])
        x = pre.normalizer()(torch.from_numpy(images).permute(0, 3, 1, 2))
        return x, tr, te, cfg

    def initial_model(self, cfg: Any, num_classes: int = 2) -> torch.nn.Module:
        """The network a run of `cfg` starts from (the engine seeds, then builds)."""
        from ..models.io import build_from_spec, model_spec
        torch.manual_seed(cfg.seed)
        return build_from_spec(model_spec(cfg, num_classes))

    def eigen_file(self, seed: int) -> Path:
        """eigen.npz of the eigen-architecture's NTK at this seed's θ0 (all eigenpairs; cached)."""
        from ..analysis.ntk import fix_signs, ntk_matrix, top_eigen
        from ..data.tasks import save_eigenfunctions

        path = self.out / "kernels" / f"seed{seed}" / "eigen.npz"
        if path.is_file():
            return path
        x, tr, te, cfg = self._points(seed)
        kernel = ntk_matrix(self.initial_model(cfg), x, chunk=self.settings.eigen.chunk, dtype=torch.float64)
        values, vectors = top_eigen(kernel)
        save_npy(path.with_name("kernel0.npy"), kernel.float().numpy())
        save_eigenfunctions(path, values.numpy(), fix_signs(vectors).numpy(), tr, te)
        return path

    def end_profile(self, spec: RunSpec, eigen_file: Path) -> Path:
        """a_j = v_jᵀ K_end v_j / ‖v_j‖² of the trained NN along the initial eigenvectors, and d(K_0, K_end) (L4)."""
        from ..analysis.ntk import alignment_profile, kernel_distance, ntk_matrix
        from ..data.tasks import read_eigenfunctions
        from ..models.io import load_checkpoint

        path = self.out / "kernels" / f"seed{spec.tags['seed']}" / f"profile_index{spec.tags['index']}.json"
        if path.is_file():
            return path
        x, _, _, _ = self._points(spec.tags["seed"])
        arrays = read_eigenfunctions(eigen_file)
        model = load_checkpoint(spec.out_dir / "model.safetensors").model
        k_end = ntk_matrix(model, x, chunk=self.settings.eigen.chunk, dtype=torch.float64)
        profile = alignment_profile(k_end, torch.from_numpy(arrays["eigenvectors"]))
        k0 = torch.from_numpy(np.load(eigen_file.with_name("kernel0.npy"))).double()
        out = {"index": spec.tags["index"], "seed": spec.tags["seed"], "run": spec.run_id,
               "eigenvalues": arrays["eigenvalues"].tolist(), "profile": profile.tolist(),
               "kernel_distance": kernel_distance(k0, k_end)}
        atomic_write_text(path, json.dumps(out))
        return path

    def report(self, ctx: RunContext, title: str) -> str:
        from .linearized_report import write_report
        return write_report(self, ctx, title)


PROTOCOLS.register("linearized")(Linearized)
