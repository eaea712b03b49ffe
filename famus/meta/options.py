"""Build a registered method or engine from explicit options, with errors that list the valid ones.

Every registered factory (a class or a function) declares its options by its signature; nothing routes
an option by looking for a constructor that happens to accept it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from famus.registry import Registry


def option_names(factory: Callable) -> list[str]:
    """The keyword options ``factory(...)`` declares, in signature order."""
    params = inspect.signature(factory).parameters.values()
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def build(registry: Registry, name: str, options: dict[str, Any] | None) -> Any:
    """``registry.get(name)(**options)``; an option the factory does not declare is a ``TypeError``.

    The message names the kind (``method``, ``engine``), the unknown options and the valid ones.
    """
    factory = registry.get(name)
    options = dict(options or {})
    valid = option_names(factory)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"unknown {registry.kind} option(s) {unknown} for {name!r}; "
                        f"valid: {', '.join(valid) or '(none)'}")
    return factory(**options)
