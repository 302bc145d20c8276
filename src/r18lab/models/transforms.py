"""Model transforms: `(backbone, **params) -> backbone`, applied to a built backbone before the heads are
attached, in list order; each is looked up by name in TRANSFORMS. A transform that finds nothing to rewrite
is an error, never a silent no-op."""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from ..registry import TRANSFORMS


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
