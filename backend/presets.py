"""Quality presets an artist picks instead of step counts: each is a set of config overrides per task."""

from __future__ import annotations

from backend.errors import ConfigError

PRESETS: dict[str, dict] = {  # generate's
    "draft": {
        "optim": {"iters": 1500},
        "refine": {"iters": 0},
        "mesh": {"iters": 0},  # the export meshes the field directly
        "export": {"grid_resolution": 128, "texture_size": 512, "max_faces": 20_000},
    },
    "standard": {},  # the defaults: 5000 latent, 1000 RGB refinement and 1000 mesh steps (512²), 1024² texture
    "high": {
        "optim": {"iters": 10_000},
        "refine": {"iters": 2000, "resolution": 512},
        "mesh": {"iters": 2000, "resolution": 512},
        "export": {"grid_resolution": 384, "texture_size": 2048, "max_faces": 150_000},
    },
}

PAINT_PRESETS: dict[str, dict] = {
    "draft": {"iters": 1500, "texture_size": 512},
    "standard": {},  # the defaults: 5000 steps, 1024² texture
    "high": {"iters": 10_000, "texture_size": 2048},
}


def preset_overrides(name: str, task: str = "generate") -> dict:
    presets = PAINT_PRESETS if task == "paint" else PRESETS
    if name not in presets:
        raise ConfigError(f"unknown quality preset {name!r}", f"choose one of {', '.join(presets)}")
    return presets[name]
