"""A job's settings, composed in one place for the command line, the service, the bench and the tests:

    the task's defaults → the method's defaults → the quality preset → a config file → the caller's own settings

(the command line's flags; a submit's fields and then its `overrides`). Later layers win; each is validated as
it is applied, so a typo names its dotted key. The method is the one named explicitly, else the last layer's
`objective.name`, else SDS.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
from typing import Any

from backend.catalog import DEFAULT_METHOD, DEFAULT_PRESET, DRAFT_PRESET, METHODS, PRESETS, TASKS, Task
from backend.config import merge
from backend.errors import ConfigError
from backend.nesting import nested


def task_info(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}", f"choose one of {', '.join(TASKS)}")
    return TASKS[name]


def task_module(name: str) -> Any:
    """The module of task `name`: its `CONFIG` class, `check_inputs` and `run_task`."""
    return importlib.import_module(task_info(name).module)


def config_type(task: str) -> type:
    return task_module(task).CONFIG


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
    """Config overrides that select method `name`: its objective and the defaults it comes with.

    With `config_type` (a task's config dataclass), only the tables that config has are kept (painting has no
    volume renderer, so HiFA's sampling and z-variance settings do not apply to it).
    """
    overrides = copy.deepcopy(objective_class(name).defaults)
    overrides.setdefault("objective", {})["name"] = name
    if config_type is not None:
        known = {f.name for f in dataclasses.fields(config_type)}
        overrides = {k: v for k, v in overrides.items() if k in known}
    return overrides


def preset_overrides(name: str, task: str) -> dict:
    if name not in PRESETS:
        raise ConfigError(f"unknown quality preset {name!r}", f"choose one of {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name].overrides.get(task, {}))


def named_method(layers: tuple[dict, ...]) -> str | None:
    """The method the last layer that names one (`objective.name`) names."""
    for layer in reversed(layers):
        objective = layer.get("objective") if isinstance(layer, dict) else None
        if isinstance(objective, dict) and objective.get("name") is not None:
            return str(objective["name"])
    return None


def setting(config: Any, path: str) -> Any:
    """The value of dotted setting `path` of a config dataclass."""
    for part in path.split("."):
        config = getattr(config, part)
    return config


def draft_steps(task: str) -> int:
    """The first-stage steps of the draft preset: what a variant runs before the artist picks one."""
    path = task_info(task).iterations
    overrides = preset_overrides(DRAFT_PRESET, task)
    for part in path.split("."):
        overrides = overrides[part]
    return int(overrides)


def compose_config(task: str, *layers: dict, method: str | None = None, preset: str | None = None,
                   draft: int | None = None) -> Any:
    """Task `task`'s settings: defaults, the method's, the preset's, then each of `layers` in turn (unvalidated
    as a whole: call its `validate()`).

    With `draft`, those of a variant's draft of that job: its first stage runs `draft` steps and no later stage
    runs (over every layer), and it exports with the draft preset's export settings (under the layers, which
    may still set them). Everything that is trained stays the job's own, so the job can finish from the
    draft's checkpoint."""
    cls = config_type(task)
    info = task_info(task)
    method = method or named_method(layers) or DEFAULT_METHOD
    config = merge(cls(), method_overrides(str(method), cls))
    config = merge(config, preset_overrides(preset or DEFAULT_PRESET, task))
    if draft is not None and info.export is not None:
        config = merge(config, {info.export: preset_overrides(DRAFT_PRESET, task).get(info.export, {})})
    for layer in layers:
        config = merge(config, layer)
    if draft is not None:
        steps = {"first": draft, **{path: 0 for path in info.later}}
        config = merge(config, nested(steps, {"first": info.iterations, **{path: path for path in info.later}}))
    return config
