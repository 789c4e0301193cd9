"""The configs' loader: YAML files that inherit, read into dataclasses with unknown keys rejected.

A YAML config is a nested mapping whose sections mirror a dataclass (each model's dataclasses live beside the
model: :mod:`geoimplicit.dsm.occupancy.config` for the occupancy-field DSM). A file may start with
``inherit_from: other.yaml`` (a path relative to that file, or ``package:NAME.yaml`` for a config shipped in
``geoimplicit/configs/``); the inherited file is loaded first and this file's values are deep-merged over it.
Files are read with ``yaml.safe_load``; unknown keys are rejected with the closest known key as a suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path
from typing import Any, get_type_hints

from geoimplicit.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def packaged_config(name: str) -> Path:
    """Path of a config shipped in ``geoimplicit/configs/`` (``default.yaml``, ``stereo.yaml``...)."""
    path = CONFIG_DIR / name
    if not path.exists():
        known = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"no packaged config {name!r}", hint=f"use one of {', '.join(known)}")
    return path


def _resolve_inherit(value: str, base: Path) -> Path:
    if value.startswith("package:"):
        return packaged_config(value.split(":", 1)[1])
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else (base.parent / p)


def load_yaml_tree(path: str | os.PathLike, _seen: tuple = ()) -> dict:
    """Read ``path`` and its ``inherit_from`` chain; return the deep-merged mapping (no validation)."""
    import yaml

    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in _seen + (path,))
        raise ConfigError(f"inherit_from forms a cycle: {chain}", path=path, hint="remove one inherit_from")
    if not path.exists():
        raise ConfigError("config file not found", path=path, hint="check the path (inherit_from is relative to the file that names it)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)  # where the parser gave up (0-based)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"not valid YAML{where}: {getattr(exc, 'problem', None) or str(exc).splitlines()[0]}",
                          path=path, hint="fix the YAML syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("a config must be a mapping of sections", path=path, hint="see geoimplicit/configs/base.yaml")
    parent = data.pop("inherit_from", None)
    if parent is None:
        return _annotate(data, path)
    if not isinstance(parent, str):
        raise ConfigError("inherit_from must be one path", path=path)
    base = load_yaml_tree(_resolve_inherit(parent, path), _seen + (path,))
    return deep_merge(base, _annotate(data, path))


class _Sourced(dict):
    """A mapping that remembers which file each of its keys came from (for error messages)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.sources: dict[str, Path] = {}


def _annotate(data: dict, path: Path) -> dict:
    out = _Sourced()
    for k, v in data.items():
        out[k] = _annotate(v, path) if isinstance(v, dict) else v
        out.sources[k] = path
    return out


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``: mappings merge recursively, other values replace."""
    out = _Sourced(base)
    out.sources = dict(getattr(base, "sources", {}))
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
        out.sources[k] = getattr(over, "sources", {}).get(k, out.sources.get(k))
    return out


def build_dataclass(cls, data: dict, where: str, fallback: Path | None):
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    sources = getattr(data, "sources", {})
    for key, value in data.items():
        src = sources.get(key, fallback)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean {where}{close[0]}?" if close else f"known keys: {', '.join(fields)}"
            raise ConfigError(f"unknown key {where}{key}", path=src, hint=hint)
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{key} must be a mapping", path=src)
            kwargs[key] = build_dataclass(typ, value, f"{where}{key}.", src)
        else:
            kwargs[key] = _check_type(value, typ, f"{where}{key}", src)
    return cls(**kwargs)


def _check_type(value: Any, typ, name: str, src):
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ in (int, float, str, bool, list) and not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(
            f"{name} must be a {typ.__name__}, got {type(value).__name__} {value!r}", path=src,
            hint="fix the value's type",
        )
    return value



def save_yaml(tree: dict, path: str | os.PathLike) -> Path:
    """Write a resolved config tree (no inheritance left) as YAML."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path
