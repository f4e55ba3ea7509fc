"""Nested settings as plain dicts: a deep merge, and flat dotted names turned into nesting. Standard library only:
the Blender extension ships this file (it merges the panel's settings with Extra Settings the same way)."""

from __future__ import annotations

from typing import Any


def merge_trees(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `extra` merged in: `extra` wins, and tables merge instead of replacing each other."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge_trees(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def nested(values: dict[str, Any], paths: dict[str, str]) -> dict:
    """The entries of `values` that `paths` names, as nested settings: {"iters": 9} with
    {"iters": "optim.iters"} → {"optim": {"iters": 9}}. Absent and None values are left out."""
    out: dict = {}
    for key, path in paths.items():
        if values.get(key) is None:
            continue
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = values[key]
    return out
