"""The linearised network around a reference θ0: f_lin(x; θ) = f(x; θ0) + J(x; θ0)(θ − θ0) (Ortiz-Jiménez et al.
2021, `neural_kernels/ntk.py::linearize_model`; spec 002d §1), computed with one `torch.func.jvp` per batch — no
Jacobian is formed. A model transform (`model.transforms: [linearize]`) that wraps the whole classifier, so the
engine, the objectives and the optimizer see the usual parameters θ (of the wrapped network, same names, same
layer groups) and train them like any model."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call, jvp
from torch.utils import _pytree

from ..errors import ConfigError
from ..registry import TRANSFORMS

_SEP = "__"  # buffer names cannot hold "."; a parameter `layer1.0.conv1.weight` is kept as `layer1__0__conv1__weight`


class Reference(nn.Module):
    """θ0 and the BN statistics the linearisation is taken at, as buffers (saved with the weights, never trained,
    invisible to code that walks conv/linear modules)."""

    def __init__(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.param_names = list(params)
        self.buffer_names = list(buffers)
        for name, value in {**params, **buffers}.items():
            if _SEP in name:
                raise ConfigError(f"transform linearize cannot store parameter {name!r} (its name holds {_SEP!r})")
            self.register_buffer(name.replace(".", _SEP), value.detach().clone())

    def params(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, n.replace(".", _SEP)) for n in self.param_names}

    def buffers_at_reference(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, n.replace(".", _SEP)) for n in self.buffer_names}


class Linearized(nn.Module):
    """`net` holds θ (trained; it starts at θ0); `reference` holds θ0 and the BN statistics. The network is always
    evaluated in eval mode (BN statistics frozen at the reference: a per-sample function, as the authors'
    `expose_bn=False`). `with_bias=False` drops f(x; θ0), giving the authors' `linearize_diff_model`."""

    def __init__(self, net: nn.Module, reference: Reference, with_bias: bool = True) -> None:
        super().__init__()
        if any(True for _ in net.named_parameters(recurse=False)) or any(True for _ in net.named_buffers(recurse=False)):
            raise ValueError(f"transform linearize: {type(net).__name__} holds parameters outside its submodules")
        for name, module in net.named_children():  # the network's modules under their own names, so parameters,
            if name == "reference":                # state-dict keys and layer groups are the plain network's
                raise ValueError("transform linearize: the network has a module named 'reference'")
            self.add_module(name, module)
        object.__setattr__(self, "net", net)  # shares the modules above; not a child
        self.reference = reference
        self.with_bias = with_bias
        self.net.eval()

    # what the engine and the objectives read from a classifier
    head_names = property(lambda self: self.net.head_names)
    logit_names = property(lambda self: self.net.logit_names)
    aux_names = property(lambda self: self.net.aux_names)
    num_classes = property(lambda self: self.net.num_classes)
    num_features = property(lambda self: self.net.num_features)
    transforms = property(lambda self: self.net.transforms)

    def train(self, mode: bool = True) -> "Linearized":
        """The wrapper's flag follows `mode`; the network stays in eval mode (frozen BN statistics)."""
        self.training = mode
        self.net.eval()
        return self

    def delta(self) -> dict[str, torch.Tensor]:
        """θ − θ0 per parameter name (differentiable in θ)."""
        ref = self.reference.params()
        return {n: p - ref[n] for n, p in self.net.named_parameters()}

    def forward(self, x: torch.Tensor) -> Any:
        theta0 = self.reference.params()
        buffers = self.reference.buffers_at_reference()

        def f(params: dict[str, torch.Tensor]) -> Any:
            return functional_call(self.net, {**params, **buffers}, (x,))

        out0, tangent = jvp(f, (theta0,), (self.delta(),))
        if not self.with_bias:
            return tangent
        return _pytree.tree_map(torch.add, out0, tangent)


def _reference_state(net: nn.Module, reference: str, reference_bn: str) -> tuple[dict, dict]:
    """(θ0, BN statistics) of the linearisation: the freshly built network's, or a checkpoint's loaded into `net`."""
    init_buffers = {n: b.detach().clone() for n, b in net.named_buffers()}
    if reference != "init":
        from ..errors import CheckpointError
        from .io import load_weights
        try:
            load_weights(net, reference)
        except CheckpointError as e:  # a reference that does not fit is a configuration mistake: exit 2
            raise ConfigError(f"transform linearize: reference {e}") from None
    buffers = init_buffers if reference_bn == "init" else {n: b.detach().clone() for n, b in net.named_buffers()}
    return {n: p.detach().clone() for n, p in net.named_parameters()}, buffers


@TRANSFORMS.register("linearize")
def linearize(model: nn.Module, reference: str = "init", bias: str = "with", reference_bn: str = "reference"
              ) -> Linearized:
    """f_lin(x; θ) = f(x; θ0) + J(x; θ0)(θ − θ0) over all trainable parameters, BN statistics frozen (spec 002d §1).

    `reference`: `init` (θ0 = the network as built) or the path of a model.safetensors of the same architecture
    (θ0 = its weights; training starts there); `bias`: `with` (f(x; θ0) included) or `without` (the authors'
    "NTK w/o bias", output 0 at θ0); `reference_bn`: `reference` (the reference's BN statistics) or `init` (reset
    to a fresh network's, as the authors do when linearising a trained network). Wraps the whole classifier, so
    it comes last in model.transforms."""
    if bias not in ("with", "without"):
        raise ConfigError(f"transform linearize: bias must be 'with' or 'without', got {bias!r}")
    if reference_bn not in ("reference", "init"):
        raise ConfigError(f"transform linearize: reference_bn must be 'reference' or 'init', got {reference_bn!r}")
    if not isinstance(reference, str) or not reference:
        raise ConfigError(f"transform linearize: reference must be 'init' or a model.safetensors path, got {reference!r}")
    if isinstance(model, Linearized):
        raise ConfigError("transform linearize is applied twice; keep one linearize entry in model.transforms")
    params, buffers = _reference_state(model, reference, reference_bn)
    return Linearized(model, Reference(params, buffers), with_bias=bias == "with")


linearize.acts_on = "model"  # applied to the built classifier, after every backbone transform
linearize.when_loading = {"reference": "init"}  # the weights file holds θ0 itself; the reference file is not read
