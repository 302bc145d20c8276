"""Model transforms: `(backbone, **params) -> backbone`, applied to a built backbone before the heads are
attached, in list order; each is looked up by name in TRANSFORMS. A transform that finds nothing to rewrite
is an error, never a silent no-op.

Blocks opt in to a transform by what they declare:
- `no_residual`: `residual` (True while the block adds a shortcut) and `remove_shortcut()`;
- `grouped`: `grouping_targets()` → [(parent module, child name)] of the convs to group, and `group_style`:
  `"dconv"` (the conv becomes grouped conv → BN → ReLU → 1×1, paper 003 sec. 3.1 / spec 003 §1.2) or
  `"regroup"` (only the conv's `groups` changes, e.g. MobileNet-V2's depthwise conv, spec 003 §1.5).
"""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from ..registry import TRANSFORMS
from .init import he_init


@TRANSFORMS.register("no_residual")
def no_residual(backbone: nn.Module) -> nn.Module:
    """Remove every residual connection, identity and 1×1 projection shortcuts alike: y = relu(F(x))
    (the "NR" networks of paper 003, sec. 3.1); blocks opt in with `residual` + `remove_shortcut()`."""
    blocks = [m for m in backbone.modules()
              if getattr(m, "residual", False) is True and callable(getattr(m, "remove_shortcut", None))]
    if not blocks:
        raise ConfigError(f"transform no_residual: backbone {type(backbone).__name__} has no residual "
                          "shortcut to remove; drop no_residual from model.transforms")
    for block in blocks:
        block.remove_shortcut()
    return backbone


class GroupedConv(nn.Sequential):
    """Paper 003's replacement for a k×k conv C_in → C_out (spec 003 §1.2, Moonshine `DConv`):
    grouped k×k conv C_in → C_in (stride s, `groups`) → BN(C_in) → ReLU → 1×1 conv C_in → C_out, no biases."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int, padding: int, groups: int) -> None:
        super().__init__()
        self.gconv = nn.Conv2d(cin, cin, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        he_init(self)


def group_count(cin: int, groups: int | None, group_width: int | None, layer: str) -> int:
    """Groups of one conv: g (constant g) or C_in / G (constant G; G = 1 is depthwise) — paper 003, Table 7."""
    if groups is not None:
        if cin % groups:
            raise ConfigError(f"transform grouped: layer {layer} has {cin} input channels, not divisible by "
                              f"groups={groups}; pick groups dividing every grouped layer's channels (or a wider model)")
        return groups
    if cin % group_width:
        raise ConfigError(f"transform grouped: layer {layer} has {cin} input channels, not divisible by "
                          f"group_width={group_width}; pick a group_width dividing every grouped layer's channels")
    return cin // group_width


def _regroup(conv: nn.Conv2d, groups: int) -> nn.Conv2d:
    """The same conv (shape, stride, padding, bias) with a different number of groups, freshly initialised."""
    return nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     groups=groups, bias=conv.bias is not None)


def _dconv(conv: nn.Conv2d, groups: int) -> GroupedConv:
    if conv.groups != 1:
        raise ConfigError("transform grouped: the convolutions are already grouped; apply grouped once")
    return GroupedConv(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0],
                       groups)


GROUP_STYLES = {"dconv": _dconv, "regroup": _regroup}


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"transform grouped: {name} must be a positive integer, got {value!r}")
    return value


@TRANSFORMS.register("grouped")
def grouped(backbone: nn.Module, groups: int | None = None, group_width: int | None = None) -> nn.Module:
    """Grouped convolutions with a constant number of groups g (`groups`) or of channels per group G
    (`group_width`, groups = C_in / G; G = 1 is depthwise) in every conv the blocks declare (paper 003, sec. 3.1,
    App. A; spec 003 §1.2 for ResNet/WRN, §1.5 for MobileNet-V2). Stem, projection shortcuts, classifier stay."""
    if (groups is None) == (group_width is None):
        raise ConfigError("transform grouped takes exactly one of groups (constant g) or group_width "
                          f"(constant G), got groups={groups!r}, group_width={group_width!r}")
    if groups is not None:
        _positive("groups", groups)
    else:
        _positive("group_width", group_width)
    names = {id(m): n for n, m in backbone.named_modules()}
    blocks = [m for m in backbone.modules() if callable(getattr(m, "grouping_targets", None))]
    if not blocks:
        raise ConfigError(f"transform grouped: backbone {type(backbone).__name__} declares no convolution to group; "
                          "drop grouped from model.transforms")
    for block in blocks:
        if getattr(block, "grouped", False):
            raise ConfigError("transform grouped is applied twice; keep one grouped entry in model.transforms")
        style = GROUP_STYLES[block.group_style]
        for parent, child in block.grouping_targets():
            conv = getattr(parent, child)
            layer = f"{names[id(parent)]}.{child}".lstrip(".")
            setattr(parent, child, style(conv, group_count(conv.in_channels, groups, group_width, layer)))
        block.grouped = True
    return backbone
