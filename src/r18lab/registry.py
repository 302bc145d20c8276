"""Name -> factory registries for backbones, heads, objectives, hooks, sources and protocols."""
from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of factories; `@REG.register("name")` adds one, `REG.get("name")` looks it up."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]


BACKBONES: Registry = Registry("backbone")
HEADS: Registry = Registry("head")
OBJECTIVES: Registry = Registry("objective")
HOOKS: Registry = Registry("hook")
PROTOCOLS: Registry = Registry("protocol")
TRANSFORMS: Registry = Registry("model transform")
TASKS: Registry = Registry("task")
