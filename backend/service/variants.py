"""Variants: one submit, several seeds, each a quick draft; the one the artist picks is finished from its checkpoint.

A submit with `variants: N` becomes N jobs with seeds s, s + 1, …, s + N − 1 that share a group id. Each runs
the job's own settings on a draft schedule (`compose_config(..., draft=k)`): its first stage for k steps, no later
stage, and the draft preset's export settings, so its result is a complete asset, quick to make and to judge.
Everything that is trained is the job's own, so finishing a draft is a resume: its spec becomes the job's whole
schedule again and its checkpoint's position the point of that schedule where the draft stopped (step k of the
first stage), and the job continues from there through its later stages and its full export.
"""

from __future__ import annotations

from typing import Any

from backend.catalog import MAX_SEED
from backend.compose import draft_steps, setting, task_info
from backend.errors import ConfigError
from backend.loop import DRAFT_KEY
from backend.service import tasks

DRAFT_FIELD = "draft"  # a variant's spec: the first-stage steps of its draft (absent once it is finished)
STATE_ORDER = ("running", "queued", "finished", "failed", "cancelled")  # a group is in its members' first


def variant_specs(spec: tasks.JobSpec, count: int, draft_iterations: int | None) -> tuple[list[dict], int | None]:
    """The specs of `count` variants of a checked submit `spec` (seeds from its own on), checked, and the
    steps of their drafts: None when a draft would be the whole job (nothing would be left to finish)."""
    config = spec.config()
    whole = int(setting(config, task_info(spec.task).iterations))
    steps = min(draft_steps(spec.task), whole) if draft_iterations is None else draft_iterations
    if steps > whole:
        raise ConfigError(f"draft_iterations is {steps:,}, more than the job's own {whole:,} first-stage steps",
                          f"ask for {whole:,} or fewer")
    first = int(spec.fields.get("seed") or 0)
    if first + count - 1 > MAX_SEED:
        raise ConfigError(f"{count} variants from seed {first} would need seeds past 2^63 - 1",
                          "start from a smaller seed")
    draft = tasks.JobSpec(spec.task, {**spec.fields, DRAFT_FIELD: steps}, spec.arrays)
    if draft.config() == config:
        steps = None  # e.g. the draft preset asked for: each variant is already the whole job
    out = []
    for i in range(count):
        fields = {**spec.fields, "seed": first + i}
        if steps is not None:
            fields[DRAFT_FIELD] = steps
        out.append(fields)
    # the variants differ only by a seed already known to be in range: one check (the mesh's, the inputs') serves all
    tasks.check_spec(tasks.JobSpec(spec.task, out[0], spec.arrays))
    return out, steps


def finish_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A variant's spec with its whole schedule: the job it was a draft of."""
    return {k: v for k, v in spec.items() if k != DRAFT_FIELD}


def continued(skeleton: dict, steps: int) -> dict:
    """A draft's checkpoint (JSON skeleton) placed in its job's whole schedule: a checkpoint after the draft's only
    stage resumes at step `steps` of the first, and any draft checkpoint may lack the state of later stages."""
    entries = dict(skeleton["$dict"])
    if int(entries.get("stage", 0)) >= 1:
        entries["stage"], entries["step"] = 0, steps
    entries[DRAFT_KEY] = True
    return {"$dict": [[k, v] for k, v in entries.items()]}


def group_state(states: list[str]) -> str:
    """A group's state: running while any variant runs, then queued, then finished if any draft finished."""
    return next(s for s in STATE_ORDER if s in states)
