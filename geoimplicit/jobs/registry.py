"""Plugins by name: built-in targets, targets registered at run time, and those that other installed packages
declare in an entry-point group (as rasterio's ``rio`` commands are found).

A target is an object (a class) or a ``"module:attribute"`` string imported when first used, so heavy imports
(torch) happen only for the plugin that runs. Another package adds a DSM method with, in its ``pyproject.toml``::

    [project.entry-points."geoimplicit.dsm_methods"]
    flat = "my_package.flat:FlatMethod"

Names given at run time (:meth:`Registry.register`) win over entry points, and entry points never replace a
built-in name (a warning says so).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from typing import Any

from geoimplicit.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["Registry"]


class Registry:
    """Named plugins of one kind (e.g. "DSM method") found in ``builtins``, :meth:`register` and ``group``."""

    def __init__(self, kind: str, group: str, builtins: dict[str, Any] | None = None, hint: str = ""):
        self.kind, self.group, self.hint = kind, group, hint
        self._builtins = dict(builtins or {})
        self._registered: dict[str, Any] = {}

    def register(self, name: str, target) -> None:
        """Offer ``target`` (an object or a ``"module:attribute"`` string) under ``name``."""
        self._registered[name] = target

    def _entry_points(self) -> dict:
        found = {}
        for ep in importlib.metadata.entry_points(group=self.group):
            if ep.name in self._builtins:
                log.warning("%s %r of %s is ignored: the name is built in", self.kind, ep.name, ep.value)
                continue
            found.setdefault(ep.name, ep)
        return found

    def names(self) -> list[str]:
        return sorted({*self._builtins, *self._registered, *self._entry_points()})

    def get(self, name: str):
        """The object registered under ``name`` (imported now if it was given as a string or entry point)."""
        target = self._registered.get(name, self._builtins.get(name))
        if target is None:
            target = self._entry_points().get(name)
        if target is None:
            raise InputError(f"unknown {self.kind} {name!r}", hint=f"use one of {', '.join(self.names())}")
        try:
            if _is_entry_point(target):
                return target.load()
            if isinstance(target, str):
                module_name, attr = target.split(":")
                return getattr(importlib.import_module(module_name), attr)
        except (ModuleNotFoundError, AttributeError) as exc:
            if isinstance(exc, ModuleNotFoundError) and not _is_own_module(exc.name, target):
                raise  # a dependency of the plugin is missing: a real error, with its traceback
            raise InputError(f"{self.kind} {name!r} is not available in this installation ({exc})",
                             hint=self.hint or None) from exc
        return target


def _is_entry_point(target) -> bool:
    # duck-typed: the importlib_metadata backport, which some packages install, has its own EntryPoint class
    return hasattr(target, "load") and isinstance(getattr(target, "value", None), str)


def _is_own_module(missing: str | None, target) -> bool:
    value = target.value if _is_entry_point(target) else target
    module_name = value.split(":")[0].strip()
    parts = module_name.split(".")
    return missing in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
