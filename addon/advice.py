"""What an artist can do about an error that ended a job, in the panel's own words.

The service's hints speak its command line and config file (`export.density_threshold`, `--preset`);
here each error code becomes the panel setting, input or button to change. Plain Python, no bpy.
"""

from __future__ import annotations

import re
from typing import Any

EXTRA = "Advanced › Extra Settings"

# where a setting named in a bad_config message is changed in the panel, by the words that name it
PANEL_SETTINGS: tuple[tuple[str, str], ...] = (
    (r"\bprompt\b", "change the Prompt"),
    (r"\bnegative\b", "shorten the Negative prompt"),
    (r"\b(optim\.)?iters\b|\biterations\b", "set Advanced › Iterations (0 uses the Quality preset's)"),
    (r"\btexture_size\b", "choose another Texture size"),
    (r"\bsketch\.looseness\b", "set Follow Loosely between 0.01 and 2"),
    (r"\bpyinstantmeshes\b|\bpymeshlab\b", "the server lacks a library for Quads or LODs: untick Quads, set LODs "
                                          "to 1, or install the server's game extra"),
    (r"levels of detail|\bexport\.lods\b", "choose fewer LODs, or more Faces"),
    (r"\bexport\.max_faces\b|\bfaces\b", "choose fewer Faces (0 uses the Quality preset's)"),
    (r"\bquality preset\b", "choose a Quality"),
    (r"\bmethod\b", "choose another Method"),
    (r"\bseed\b", "choose another Seed"),
)


def setting_paths(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of every leaf of nested settings: {"optim": {"iters": 0}} → ["optim.iters"]."""
    paths = []
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        paths += setting_paths(value, f"{path}.") if isinstance(value, dict) and value else [path]
    return paths


def _named_in(message: str, paths: list[str]) -> bool:
    """Whether the message names one of the settings (by its path or its last part)."""
    return any(re.search(rf"\b{re.escape(p)}\b", message) or re.search(rf"\b{re.escape(p.rsplit('.', 1)[-1])}\b",
                                                                       message) for p in paths)


def _bad_config(message: str, extra: dict[str, Any]) -> str:
    if extra and (_named_in(message, setting_paths(extra)) or "unknown setting" in message):
        return f"fix that setting in {EXTRA}"
    for pattern, action in PANEL_SETTINGS:
        if re.search(pattern, message):
            return action
    return f"check the panel's settings and {EXTRA}" if extra else "check the panel's settings"


def _no_surface(details: dict[str, Any]) -> str:
    suggested = details.get("suggested_threshold")
    if suggested is None:
        return "no threshold gives this field a surface: generate again with another Seed"
    if details.get("reexport"):
        return (f"press Re-export at {suggested:g} to make the surface of the trained field at that density, "
                "without training again")
    return (f"add {{\"export\": {{\"density_threshold\": {suggested:g}}}}} to {EXTRA} and generate again")


def _bad_input(message: str) -> str | None:
    if re.search(r"\bUVs?\b|\bUDIM\b", message):  # the service's own hint says how to fix the UVs
        return None
    if "mesh to paint" in message or "paint mesh" in message:
        return "select another mesh to paint, or fix this one (apply its modifiers, remove degenerate faces)"
    if "sketch" in message:
        return "select other mesh objects as the sketch, or choose Text Only"
    if "prompt" in message:
        return "change the Prompt"
    return "check the selected objects"


SERVER_LOG = "the server's log (server.log in the extension's user folder, for a server started from Blender)"
BY_CODE: dict[str, str] = {
    "worker_lost": "the job stopped its worker again and again: choose Quality Draft, a smaller Texture or fewer "
                   "Advanced › Iterations, then generate again",
    "model_not_found": "the server could not load its model: check its --model (Preferences › Server Arguments, "
                       f"for a server started from Blender) and {SERVER_LOG}",
    "unknown_model": "the server does not serve that model: remove \"model\" from Advanced › Extra Settings",
    "queue_full": "you have the most queued jobs the server allows: wait for one to start, or cancel one",
    "unsupported_task": "the server cannot run this yet: update it, or choose another Mode",
    "internal": f"a bug in the server: {SERVER_LOG} has the details; generate again, perhaps with another Seed",
    "not_connected": "check Preferences › Server and the key files, or press Start Local Server",
    "timeout": "check Preferences › Server and the key files, or raise Preferences › Timeout",
    "not_reexportable": "generate again",
    "too_large": "the selection is too big to send: decimate it, or select fewer objects",
    "bad_array": "the selected mesh cannot be sent as it is: check it for NaN vertices or loose faces",
}


def advise(code: str, message: str, details: dict[str, Any] | None = None,
           extra: dict[str, Any] | None = None) -> str | None:
    """What to do about an error that ended a job, or None when the service's own hint is the best there is.

    `details` are the error's measurements; `extra` the job's Advanced › Extra Settings.
    """
    if code == "no_surface":
        return _no_surface(details or {})
    if code == "bad_config":
        return _bad_config(message, extra or {})
    if code == "bad_input":
        return _bad_input(message)
    return BY_CODE.get(code)
