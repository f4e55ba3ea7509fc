"""Header fields: one rule per field of each message type, and the check of a header against them."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ...catalog import MAX_PROMPT_CHARS, MAX_SEED
from .base import (
    JOB_ID,
    JOB_STATES,
    MAX_GROUP,
    NAME_PATTERN,
    REQUEST_ID,
    REQUEST_LIMITS,
    TASK_NAMES,
    Limits,
    ProtocolError,
    a_or_an,
)


@dataclass(frozen=True)
class F:
    """One header field's rule."""

    kind: type
    required: bool = False
    max_len: int | None = None  # characters of a str, items of a list
    lo: float | None = None
    hi: float | None = None
    choices: frozenset | None = None
    pattern: re.Pattern | None = None
    nullable: bool = False


def _str(max_len: int, **kw: Any) -> F:
    return F(str, max_len=max_len, **kw)


_JOB = F(str, required=True, pattern=JOB_ID)
_STATE = F(str, choices=JOB_STATES)
_TEXT = _str(4000)

SCHEMAS: dict[str, dict[str, F]] = {
    "hello": {"client": _str(200), "watch": F(bool)},
    "submit": {
        "task": F(str, required=True, choices=TASK_NAMES),
        "prompt": _str(MAX_PROMPT_CHARS), "negative": _str(MAX_PROMPT_CHARS),
        "method": _str(64, pattern=NAME_PATTERN), "preset": _str(64, pattern=NAME_PATTERN), "model": _str(1024),
        # ranges of settings beyond their wire type are the service's (one table for fields and overrides)
        "seed": F(int, lo=0, hi=MAX_SEED), "iterations": F(int, lo=1),
        "overrides": F(dict), "watch": F(bool),
        # where the `image` blob was seen from: degrees in the asset's frame (0, 0: its front, −Y)
        "image_azimuth": F(float, lo=-360, hi=360), "image_elevation": F(float, lo=-90, hi=90),
        # that many drafts with seeds seed, seed + 1, …, one of which the client then finishes
        "variants": F(int, lo=1, hi=MAX_GROUP), "draft_iterations": F(int, lo=1),
    },
    "status": {"job": _JOB, "watch": F(bool)},
    "list": {"limit": F(int, lo=1, hi=1000), "state": _STATE},
    "cancel": {"job": _JOB},
    "fetch": {"job": _JOB, "glb": F(bool)},
    "reexport": {"job": _JOB, "export": F(dict, required=True), "watch": F(bool)},
    "finish": {"job": _JOB, "cancel_others": F(bool), "watch": F(bool)},
    "heartbeat": {"time": F(float), "queue": F(int, lo=0), "workers": F(int, lo=0), "models": F(list, max_len=64)},
    "welcome": {"server": _str(200), "version": _str(64), "protocol": F(int), "tasks": F(list),
                "methods": F(list), "presets": F(list), "choices": F(dict), "models": F(list), "queue": F(int, lo=0),
                "workers": F(int, lo=0), "limits": F(dict), "unavailable": F(dict)},
    "accepted": {"job": _JOB, "position": F(int, lo=0), "variants": F(list, max_len=MAX_GROUP)},
    "job": {"job": F(dict, required=True)},
    "jobs": {"jobs": F(list, required=True, max_len=1000)},
    "progress": {"job": _JOB, "stage": _str(64, required=True), "step": F(int, required=True, lo=0),
                 "total": F(int, required=True, lo=0), "losses": F(dict), "eta_s": F(float, lo=0, nullable=True),
                 "worker": _str(200)},
    "result": {"job": _JOB, "glb_path": _str(4096), "stats": F(dict)},
    "error": {"job": F(str, pattern=JOB_ID), "code": _str(64, required=True, pattern=NAME_PATTERN),
              "message": F(str, required=True, max_len=4000), "hint": F(str, max_len=4000, nullable=True),
              "details": F(dict)},
    "ready": {"models": F(list, required=True, max_len=64), "device": _str(64), "pid": F(int, lo=0),
              "name": _str(200)},
    "task": {"job": _JOB, "spec": F(dict, required=True), "checkpoint": F(dict, nullable=True),
             "attempt": F(int, lo=0)},
    "checkpoint": {"job": _JOB, "state": F(dict, required=True)},
}


def _check_field(name: str, rule: F, value: Any, depth_limit: int) -> None:
    def bad(why: str) -> ProtocolError:
        return ProtocolError("bad_field", f"field {name!r} {why}")

    if value is None:
        if rule.nullable:
            return
        raise bad("must not be null")
    if rule.kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise bad("must be a finite number")
    elif rule.kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, rule.kind)
    if not ok:
        raise bad(f"must be {rule.kind.__name__}, got {type(value).__name__}")
    if rule.max_len is not None and len(value) > rule.max_len:
        raise bad(f"is longer than {rule.max_len}")
    if rule.lo is not None and value < rule.lo or rule.hi is not None and value > rule.hi:
        raise bad(f"must be in [{rule.lo}, {rule.hi}], got {value}")
    if rule.choices is not None and value not in rule.choices:
        raise bad(f"must be one of {', '.join(sorted(rule.choices))}, got {value!r}")
    if rule.pattern is not None and not rule.pattern.fullmatch(value):
        raise bad(f"has a malformed value {value[:80]!r}")
    if isinstance(value, (dict, list)) and _depth(value) > depth_limit:
        raise bad(f"is nested deeper than {depth_limit} levels")


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def check_fields(kind: str, fields: dict[str, Any], limits: Limits = REQUEST_LIMITS) -> None:
    """Refuse unknown, missing and ill-typed fields of a `kind` message (envelope keys excluded)."""
    schema = SCHEMAS[kind]
    for name, value in fields.items():
        if name == "id":
            if not isinstance(value, str) or not REQUEST_ID.fullmatch(value):
                raise ProtocolError("bad_field", "field 'id' must be 1-64 printable ASCII characters")
            continue
        rule = schema.get(name)
        if rule is None:
            raise ProtocolError("bad_field", f"unknown field {name!r} in {a_or_an(kind)} message")
        _check_field(name, rule, value, limits.max_depth)
    missing = [n for n, r in schema.items() if r.required and n not in fields]
    if missing:
        raise ProtocolError("bad_field", f"{a_or_an(kind)} message needs field {missing[0]!r}")
