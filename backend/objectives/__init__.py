"""Objectives turn a guidance's opinion of a render into a loss whose gradient moves the scene."""

from __future__ import annotations

from backend.objectives.sds import SDS, ObjectiveConfig

OBJECTIVES = {"sds": SDS}

__all__ = ["OBJECTIVES", "SDS", "ObjectiveConfig"]
