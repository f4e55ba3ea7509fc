"""The `objective` table of a task's config, composed from the method registry, and the objective it builds.

The shared settings (which method, the guidance scale) sit beside one table per objective that has settings
of its own (`objective.hifa`, `objective.vsd`, ...), each that objective's own dataclass: a new objective's
table appears here without an edit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from backend.catalog import DEFAULT_METHOD, METHODS
from backend.compose import check_method, objective_class
from backend.errors import ConfigError
from backend.guidance.base import Guidance
from backend.objectives.base import Objective


@dataclass
class SharedObjectiveSettings:
    name: str = DEFAULT_METHOD
    guidance_scale: float = 100.0  # classifier-free guidance (Latent-NeRF, DreamFusion: 100)

    def validate(self) -> None:
        check_method(self.name)
        if not self.guidance_scale >= 0:
            raise ConfigError(f"guidance_scale must be ≥ 0, got {self.guidance_scale}")
        for f in dataclasses.fields(self):
            table = getattr(self, f.name)
            if dataclasses.is_dataclass(table):
                table.validate()

    def table(self, name: str) -> object | None:
        """Method `name`'s own settings (None when its objective has none)."""
        return getattr(self, name, None)


def _objective_config() -> type:
    tables = []
    for name in METHODS:
        settings = objective_class(name).settings_type
        if settings is not None:
            tables.append((name, settings, dataclasses.field(default_factory=settings)))
    config = dataclasses.make_dataclass("ObjectiveConfig", tables, bases=(SharedObjectiveSettings,))
    config.__module__ = __name__  # found where it is defined (pickling, reprs, type hints)
    return config


ObjectiveConfig = _objective_config()


def build_objective(config: SharedObjectiveSettings, guidance: Guidance) -> Objective:
    """The objective `config` names, with its guidance scale and its own settings table."""
    return objective_class(config.name)(guidance, config.guidance_scale, config.table(config.name))
