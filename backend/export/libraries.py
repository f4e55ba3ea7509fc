"""The optional libraries of game-ready export, checked before a job trains rather than when it exports.

Quad remeshing is Instant Meshes (`pyinstantmeshes`); levels of detail that keep the UV atlas are MeshLab's
texture-aware quadric edge collapse (`pymeshlab`). Both come with the `game` extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from backend.errors import LatentForgeError

INSTALL = "pip install 'latentforge[game]'"
WHAT = {"pyinstantmeshes": "--quad (quad remeshing with Instant Meshes)",
        "pymeshlab": "--lods (levels of detail that share one UV atlas)"}


class MissingLibraryError(LatentForgeError):
    """An export setting needs a library this Python does not have."""

    code = "bad_config"


def load(name: str) -> ModuleType:
    """The module `name`, or a `MissingLibraryError` that says what needs it and how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise MissingLibraryError(f"{WHAT[name]} needs the Python package {name!r}, which is not installed "
                                  f"({exc})", f"install it with {INSTALL}, or export without that setting") from None


def needed(quad: bool, lods: int) -> list[str]:
    """The libraries an export with these settings needs."""
    return (["pyinstantmeshes"] if quad else []) + (["pymeshlab"] if lods > 1 and not quad else [])


def check(quad: bool, lods: int) -> None:
    """Raise `MissingLibraryError` unless every library the settings need can be imported."""
    for name in needed(quad, lods):
        load(name)
