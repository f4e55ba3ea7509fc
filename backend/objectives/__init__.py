"""Objectives turn a guidance's opinion of a render into a loss whose gradient moves the scene."""

from __future__ import annotations

from dataclasses import dataclass, field

from backend.objectives import sds
from backend.objectives.base import Objective, checkpointed
from backend.objectives.hifa import BGT, BGTConfig
from backend.objectives.sds import SDS
from backend.objectives.vsd import VSD, VSDConfig

OBJECTIVES = {"sds": SDS, "hifa": BGT, "vsd": VSD}


@dataclass
class ObjectiveConfig(sds.ObjectiveConfig):
    """The settings every objective shares (name, guidance scale) plus one table per objective that has its own."""

    hifa: BGTConfig = field(default_factory=BGTConfig)
    vsd: VSDConfig = field(default_factory=VSDConfig)

    def validate(self) -> None:
        super().validate()
        self.hifa.validate()
        self.vsd.validate()


__all__ = ["OBJECTIVES", "SDS", "BGT", "BGTConfig", "VSD", "VSDConfig", "Objective", "ObjectiveConfig",
           "checkpointed"]
