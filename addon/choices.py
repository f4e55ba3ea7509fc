"""The panel's Method and Quality lists: what the connected server offers (its welcome's `choices`), and until
a server has answered, the catalogue this extension ships with (the service's own, at this version)."""

from __future__ import annotations

from typing import Any

from ..backend import catalog

KINDS = {"methods": catalog.METHODS, "presets": catalog.PRESETS}
DEFAULTS = {"methods": catalog.DEFAULT_METHOD, "presets": catalog.DEFAULT_PRESET}

_offered: dict[str, list[list[str]]] = {}
# Blender keeps only pointers to an enum's strings: the tuples it was handed must outlive its use of them
_items: dict[str, list[tuple[str, str, str, str, int]]] = {}


def offer(welcome: dict[str, Any]) -> None:
    """Take the lists a server's welcome offers (a server too old to send them keeps the shipped ones)."""
    offered = welcome.get("choices")
    for kind in KINDS:
        entries = offered.get(kind) if isinstance(offered, dict) else None
        valid = isinstance(entries, list) and entries and all(
            isinstance(e, list) and len(e) == 3 and all(isinstance(x, str) for x in e) for e in entries)
        if valid:
            _offered[kind] = [list(e) for e in entries]
        else:
            _offered.pop(kind, None)
    _items.clear()


def listed(kind: str) -> list[list[str]]:
    """[[name, label, description], ...] of `kind` ("methods" or "presets")."""
    return _offered.get(kind) or catalog.choices(KINDS[kind])


def names(kind: str) -> list[str]:
    return [entry[0] for entry in listed(kind)]


def enum_items(kind: str) -> list[tuple[str, str, str, str, int]]:
    if kind not in _items:
        _items[kind] = [(name, label, description, "NONE", i) for i, (name, label, description) in
                        enumerate(listed(kind))]
    return _items[kind]


def index(kind: str, name: str) -> int:
    """The list position of `name`, or of the default when the server does not offer it."""
    listed_names = names(kind)
    for wanted in (name, DEFAULTS[kind]):
        if wanted in listed_names:
            return listed_names.index(wanted)
    return 0
