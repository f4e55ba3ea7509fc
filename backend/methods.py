"""Methods a user picks by name (`--method`, a job's "method", the add-on's Method list): the registry.

Each method is an objective class (its formula, its own settings table and the defaults it comes with) found
by name; this table is light (no torch), so the command line's help and the service's welcome read it
without loading a model. Adding a method is its objective's file plus one line here.

Picking a method applies its objective's `defaults` on top of a task's defaults and before any preset,
config file or flag, so a user's own settings still win. A task keeps only the parts it has (painting has
no volume renderer, so HiFA's sampling and z-variance settings do not apply to it).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any

from backend.errors import ConfigError


@dataclass(frozen=True)
class Method:
    label: str  # as the add-on's Method list shows it
    objective: str  # "module:Class" of its objective, imported when a job needs it
    description: str


METHODS: dict[str, Method] = {
    "sds": Method("SDS", "backend.objectives.sds:SDS", "Score distillation (DreamFusion / Latent-NeRF)"),
    "hifa": Method("HiFA", "backend.objectives.hifa:BGT",
                   "HiFA's multi-step denoising losses and annealed timesteps: sharper, slower"),
    "vsd": Method("VSD", "backend.objectives.vsd:VSD",
                  "ProlificDreamer's variational score distillation: trains a LoRA of the model on the object's "
                  "own views, at a normal guidance scale (7.5): less over-saturated, slower"),
}
DEFAULT_METHOD = "sds"


def check_method(name: str) -> str:
    """`name` if it names a method, else the error that lists them (the one place a method name is checked)."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}", f"choose one of {', '.join(sorted(METHODS))}")
    return name


def objective_class(name: str) -> Any:
    """The objective class of method `name` (imported on first use)."""
    module, _, cls = METHODS[check_method(name)].objective.partition(":")
    return getattr(importlib.import_module(module), cls)


def method_overrides(name: str, config_type: type | None = None) -> dict:
    """Config overrides that select method `name` (its objective and defaults), as nested dicts.

    With `config_type` (a task's config dataclass), only the tables that config has are kept.
    """
    overrides = copy.deepcopy(objective_class(name).defaults)
    overrides.setdefault("objective", {})["name"] = name
    if config_type is not None:
        known = {f.name for f in dataclasses.fields(config_type)}
        overrides = {k: v for k, v in overrides.items() if k in known}
    return overrides


def describe_methods() -> dict[str, dict[str, str]]:
    """{name: {"label", "description"}} for every method, in the registry's order (the service's welcome)."""
    return {name: {"label": m.label, "description": m.description} for name, m in METHODS.items()}
