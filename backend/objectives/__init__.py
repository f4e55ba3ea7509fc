"""Objectives turn a guidance's opinion of a render into a loss whose gradient moves the scene.

Which objectives exist, and by what name, is `backend.catalog`'s registry; the `objective` config table and
`build_objective` are in `backend.objectives.config`.
"""

from backend.objectives.base import Objective, checkpointed

__all__ = ["Objective", "checkpointed"]
