"""Whether the service can have the models it was started with, checked without loading any.

A model that surely cannot be loaded here (no such file or folder, a hub id that is neither cached nor
downloadable offline) is reported in `welcome` and refuses submits with `model_not_found`, rather than
leaving jobs queued for a worker that can never run them.
"""

from __future__ import annotations

import os
from pathlib import Path

from backend.guidance import GUIDANCES, default_model

HINT = ("restart the service with --model naming a local diffusers folder (with model_index.json), a "
        ".safetensors/.ckpt file, a hub id it can download or has cached, or target:MESH.glb")
_CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


def problem(spec: str) -> str | None:
    """Why the guidance `spec` cannot be loaded on this machine, or None when it can (or may: a download)."""
    kind, sep, arg = spec.partition(":")
    if not sep or kind not in GUIDANCES:
        kind, arg = "sd", spec
    if kind == "target":
        return None if arg and Path(arg).expanduser().is_file() else f"no target mesh file at {arg!r}"
    name = arg or default_model()
    path = Path(name).expanduser()
    if path.is_file():
        return None
    if path.is_dir():
        return None if (path / "model_index.json").is_file() else f"the folder {name!r} has no model_index.json"
    if (name.startswith((".", "~")) or os.path.isabs(name) or name.lower().endswith(_CHECKPOINT_SUFFIXES)
            or name.count("/") > 1 or "\\" in name):
        return f"no model file or folder at {name!r}"
    return _hub_problem(name)


def _hub_problem(repo: str) -> str | None:
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:  # pragma: no cover - diffusers depends on it
        return None
    try:
        cached = try_to_load_from_cache(repo, "model_index.json")
    except Exception:  # a malformed id: let the worker say what is wrong with it
        return None
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES",
                                                                                                  "TRUE"}
    if isinstance(cached, str) or not offline:
        return None
    return f"the hub model {repo!r} is not in the Hugging Face cache and the hub is offline (HF_HUB_OFFLINE)"
