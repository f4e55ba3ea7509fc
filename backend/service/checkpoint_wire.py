"""Checkpoints as JSON + raw arrays, so they can travel from a worker to the service and back without pickle.

A checkpoint (what `backend.loop.Checkpointer` saves) is nested dicts, lists and tuples of tensors and
plain values. `flatten` turns it into a JSON skeleton whose tensors are `{"$tensor": i}` references
into a list of numpy arrays; `unflatten` rebuilds it. The worker reads the file the loop wrote and
ships it; a worker that picks the job up again writes it back before the task resumes from it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.loop import Checkpointer
from backend.service.protocol import CHECKPOINT_PREFIX, DTYPES


def flatten(state: Any) -> tuple[Any, dict[str, np.ndarray]]:
    arrays: dict[str, np.ndarray] = {}

    def walk(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            array = value.detach().cpu().numpy()
            if array.dtype.name not in DTYPES:
                raise ValueError(f"a checkpoint tensor has dtype {array.dtype}, which the protocol cannot carry")
            name = f"{CHECKPOINT_PREFIX}{len(arrays)}"
            arrays[name] = array
            return {"$tensor": name}
        if isinstance(value, dict):
            return {"$dict": [[k, walk(v)] for k, v in value.items()]}
        if isinstance(value, tuple):
            return {"$tuple": [walk(v) for v in value]}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return {"$float": repr(value)}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise ValueError(f"a checkpoint holds a {type(value).__name__}, which cannot be sent")

    return walk(state), arrays


def unflatten(skeleton: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(skeleton, list):
        return [unflatten(v, arrays) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if "$tensor" in skeleton:
        return torch.from_numpy(np.array(arrays[skeleton["$tensor"]]))  # a writable copy
    if "$dict" in skeleton:
        return {k: unflatten(v, arrays) for k, v in skeleton["$dict"]}
    if "$tuple" in skeleton:
        return tuple(unflatten(v, arrays) for v in skeleton["$tuple"])
    if "$float" in skeleton:
        return float(skeleton["$float"])
    raise ValueError(f"malformed checkpoint skeleton key {sorted(skeleton)[:3]}")


def position(skeleton: Any) -> dict[str, int]:
    """The {"stage", "step"} a checkpoint resumes at."""
    entries = dict(skeleton["$dict"]) if isinstance(skeleton, dict) and "$dict" in skeleton else {}
    return {"stage": int(entries.get("stage", 0)), "step": int(entries.get("step", 0))}


def read(job_dir: Path) -> tuple[Any, dict[str, np.ndarray]] | None:
    state = Checkpointer(job_dir).load()
    return None if state is None else flatten(state)


def write(job_dir: Path, skeleton: Any, arrays: dict[str, np.ndarray]) -> None:
    Checkpointer(job_dir).save(unflatten(skeleton, arrays))
