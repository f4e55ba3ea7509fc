"""One schema for every setting a client sends: a submit's fields and each key of its `overrides`.

Types, unknown keys and ranges come from the task config dataclasses and their `validate()`, the same
code the command line runs, so a setting added to a config is covered here without an entry. On top,
the service applies what the command line leaves to the user's own machine: ceilings for settings that
scale memory or time (an explicit table, and a rule by name for settings the table does not list yet),
and no paths or model names from a client.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from typing import Any

from backend.errors import ConfigError

# the most this service runs of each setting that scales memory or time; the presets fit well inside
CEILINGS: dict[str, int] = {
    "optim.iters": 100_000, "refine.iters": 20_000, "iters": 100_000, "finetune_iters": 20_000,
    "optim.batch": 8,
    "resolution": 128, "refine.resolution": 512, "finetune_resolution": 1024, "texture_size": 4096,
    "render.samples": 512, "render.importance_samples": 512,
    "nerf.hidden_dim": 256, "nerf.hidden_layers": 8, "nerf.levels": 24, "nerf.log2_table_size": 22,
    "nerf.max_resolution": 8192, "nerf.base_resolution": 512, "nerf.features_per_level": 8,
    "nerf.background_hidden": 256, "nerf.background_frequencies": 16,
    "export.grid_resolution": 512, "export.texture_size": 4096, "export.max_faces": 500_000, "export.lods": 4,
    "sketch.grid_resolution": 256,
    "speed.occupancy.resolution": 256, "speed.occupancy.buckets": 64,
    "objective.hifa.denoise_steps": 50,
}
# an integer setting named like one of these scales memory or time; one the table lacks gets this many
# times its default at most
SCALING_NAME = re.compile(r"iters|steps|samples|size|resolution|dim|hidden|batch|levels|faces|vertices|"
                          r"frequencies|buckets|width|depth|count|views")
DEFAULT_HEADROOM = 8
# a text setting named like this names a file or a model: the service's own choice, never a client's
CLIENT_FORBIDDEN_NAME = re.compile(r"(^|_)(model|path|file|dir|folder|url|checkpoint)s?$")


@dataclass(frozen=True)
class Setting:
    path: str  # dotted, e.g. "optim.iters"
    type: Any  # the field's annotation: int, float, str, bool, tuple[float, float], ...
    default: Any

    @property
    def leaf(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    @property
    def forbidden(self) -> bool:
        """A path or model name: clients may not set it."""
        return self.type is str and bool(CLIENT_FORBIDDEN_NAME.search(self.leaf))

    @property
    def floor(self) -> int | None:
        """No integer setting is negative (0 often means off: refine.iters, importance_samples)."""
        return 0 if self.type is int else None

    @property
    def ceiling(self) -> int | None:
        if self.path in CEILINGS:
            return CEILINGS[self.path]
        if self.type is int and SCALING_NAME.search(self.leaf):
            return max(DEFAULT_HEADROOM * int(self.default), DEFAULT_HEADROOM)
        return None


def settings(config_type: type) -> dict[str, Setting]:
    """Every leaf setting of a config dataclass, by dotted path."""
    out: dict[str, Setting] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(tp, f"{prefix}{f.name}.")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            out[prefix + f.name] = Setting(prefix + f.name, tp, default)

    walk(config_type, "")
    return out


def _leaves(tree: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        paths.extend(_leaves(value, f"{path}.") if isinstance(value, dict) else [path])
    return paths


def check_overrides(overrides: dict, config_type: type) -> None:
    """Refuse overrides that name a path or a model (their types and ranges are the config's to check)."""
    known = settings(config_type)
    for path in _leaves(overrides):
        setting = known.get(path)
        if setting is not None and setting.forbidden:
            raise ConfigError(f"overrides.{path} cannot be set by a client: the service chooses its files "
                              "and models", f"leave {path} out of the overrides")


def _value(config: Any, path: str) -> Any:
    for part in path.split("."):
        config = getattr(config, part)
    return config


def check_ceilings(config: Any, fields: dict[str, str] | None = None) -> None:
    """Refuse a (validated) config that asks for more of a setting than this service runs, or a negative count.

    `fields`: the submit's fields that set settings (field → dotted setting), so an error names the field too.
    """
    names = {setting: f"{setting} (the submit's `{field}`)" for field, setting in (fields or {}).items()}
    for path, setting in settings(type(config)).items():
        value, floor, limit = _value(config, path), setting.floor, setting.ceiling
        if floor is not None and value < floor:
            raise ConfigError(f"{names.get(path, path)} is {value:,}; it must be at least {floor}")
        if limit is not None and value > limit:
            raise ConfigError(f"{names.get(path, path)} is {value:,}, over this service's limit of {limit:,}",
                              f"ask for {limit:,} or less")


def ceilings(*config_types: type) -> dict[str, int]:
    """Every ceiling that applies to the given task configs, for `welcome.limits`."""
    out: dict[str, int] = {}
    for config_type in config_types:
        for path, setting in settings(config_type).items():
            if setting.ceiling is not None:
                out[path] = setting.ceiling
    return dict(sorted(out.items()))
