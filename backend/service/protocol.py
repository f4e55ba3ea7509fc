"""Protocol v1 of the LatentForge service: multipart ZeroMQ messages, encoded and strictly validated.

Frame 0 is a UTF-8 JSON header `{"v": 1, "type": ..., "id"?: ..., <fields>, "arrays": [...], "blobs": [...]}`;
one raw little-endian frame follows per declared array, then one per declared blob. PROTOCOL.md is
the human-readable version of this file. Imports only the standard library, numpy and pyzmq: the
Blender add-on ships this module as it is.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..catalog import MAX_FACES, MAX_PROMPT_CHARS, MAX_SEED, MAX_VERTICES, TASKS

VERSION = 1
MAX_PREVIEW_BYTES = 4 << 20
MAX_SLOTS = 32767  # a paint submit's material slots: Blender's limit
MAX_IMAGES = 64  # image arrays (images × UDIM tiles) one paint submit may carry
MAX_IMAGE_SIDE = 16384
FIRST_TILE, LAST_TILE = 1001, 1999  # UDIM tile numbers: ten per row, 99 rows
LIVENESS = 5  # heartbeat intervals of silence after which the service counts a worker as gone

CLIENT_REQUESTS = frozenset({"hello", "submit", "status", "list", "cancel", "fetch", "reexport", "heartbeat"})
SERVER_REPLIES = frozenset({"welcome", "accepted", "job", "jobs", "progress", "result", "error", "heartbeat"})
WORKER_TO_BROKER = frozenset({"ready", "heartbeat", "progress", "checkpoint", "result", "error"})
BROKER_TO_WORKER = frozenset({"task", "cancel", "heartbeat"})
MESSAGE_TYPES = CLIENT_REQUESTS | SERVER_REPLIES | WORKER_TO_BROKER | BROKER_TO_WORKER

TASK_NAMES = frozenset(TASKS)
JOB_STATES = frozenset({"queued", "running", "finished", "failed", "cancelled"})
FINAL_STATES = frozenset({"finished", "failed", "cancelled"})  # a job in one of these never runs again
DTYPES = frozenset({"uint8", "int32", "int64", "float16", "float32", "float64"})

ERROR_CODES: dict[str, str] = {
    # the message itself
    "bad_message": "frame 0 is not a UTF-8 JSON object",
    "unsupported_version": "the header's `v` is not a protocol version this peer speaks",
    "unknown_type": "the header's `type` is not a message type of this protocol",
    "unexpected_type": "a known type that this side does not accept (e.g. a reply sent as a request)",
    "bad_frames": "the frames disagree with the header's `arrays` and `blobs`",
    "too_large": "a message, header, array or blob is over its size limit",
    "bad_field": "a header field is missing, unknown, of the wrong type or out of range",
    "bad_array": "an array has the wrong name, dtype or shape, non-finite values or bad indices",
    # the service
    "unknown_job": "no job has this id",
    "unknown_model": "the model is not one the service was started with",
    "unsupported_task": "the task exists in the protocol but this service cannot run it yet",
    "queue_full": "this client already has the maximum number of queued jobs",
    "not_finished": "fetch of a job that has no result (yet)",
    "bad_config": "a setting (preset, overrides, iterations...) is invalid",
    "bad_input": "a mesh or prompt cannot be used",
    "model_not_found": "the worker could not load the model's weights",
    "cancelled": "the job was cancelled by a client",
    "worker_lost": "the job's worker died too many times while running it",
    "job_failed": "the job stopped with an error; the message says why",
    "internal": "a bug in the service; the message has details",
    "busy": "a worker was sent a task while it was running another",
    "no_surface": "the export threshold leaves no surface in the trained field; `details` has what was measured",
    "not_reexportable": "a reexport of a job that kept no trained field (it is not a failed export)",
}

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")
REQUEST_ID = re.compile(r"[\x21-\x7e]{1,64}")  # printable ASCII, no spaces
JOB_ID = re.compile(r"[0-9a-f]{32}")  # uuid4 hex: cannot name a path outside the jobs folder
_SURROGATE = re.compile("[\ud800-\udfff]")


def a_or_an(word: str) -> str:
    """`word` with its indefinite article: "an error", "a heartbeat", "an armature", "a uint8"."""
    # a leading "u" read as "you" takes "a"; the vocabularies named in messages (message types, object
    # types, dtypes and Python type names) have no other exceptions
    you = word[:1].lower() == "u" and word[:3].lower() in ("uni", "uin", "use", "usu", "uti")
    return f"{'an' if word[:1].lower() in 'aeiou' and not you else 'a'} {word}"


class ProtocolError(Exception):
    """A message that breaks the protocol; `code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class Limits:
    """Caps for decoding; the service applies REQUEST_LIMITS to everything a client sends."""

    max_message_bytes: int
    max_header_bytes: int
    max_frames: int
    max_array_bytes: int
    max_ndim: int = 4
    max_depth: int = 8  # nesting of JSON objects and lists in header fields


REQUEST_LIMITS = Limits(max_message_bytes=256 << 20, max_header_bytes=64 << 10, max_frames=16 + MAX_IMAGES,
                        max_array_bytes=128 << 20)
# replies from an authenticated server, and the broker ↔ worker link (results, checkpoints)
TRUSTED_LIMITS = Limits(max_message_bytes=4 << 30, max_header_bytes=4 << 20, max_frames=4096,
                        max_array_bytes=2 << 30, max_depth=32)


Frames = list[bytes | memoryview]  # one multipart message, as `encode` returns it


@dataclass
class Message:
    type: str
    fields: dict[str, Any] = field(default_factory=dict)  # the header without v, type, arrays and blobs
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # read-only views of the frames
    blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def id(self) -> str | None:
        return self.fields.get("id")


# ---------------------------------------------------------------------------------------------- fields


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
        "method": _str(64, pattern=_NAME), "preset": _str(64, pattern=_NAME), "model": _str(1024),
        # ranges of settings beyond their wire type are the service's (one table for fields and overrides)
        "seed": F(int, lo=0, hi=MAX_SEED), "iterations": F(int, lo=1),
        "overrides": F(dict), "watch": F(bool),
    },
    "status": {"job": _JOB, "watch": F(bool)},
    "list": {"limit": F(int, lo=1, hi=1000), "state": _STATE},
    "cancel": {"job": _JOB},
    "fetch": {"job": _JOB, "glb": F(bool)},
    "reexport": {"job": _JOB, "export": F(dict, required=True), "watch": F(bool)},
    "heartbeat": {"time": F(float), "queue": F(int, lo=0), "workers": F(int, lo=0), "models": F(list, max_len=64)},
    "welcome": {"server": _str(200), "version": _str(64), "protocol": F(int), "tasks": F(list),
                "methods": F(list), "presets": F(list), "choices": F(dict), "models": F(list), "queue": F(int, lo=0),
                "workers": F(int, lo=0), "limits": F(dict), "unavailable": F(dict)},
    "accepted": {"job": _JOB, "position": F(int, lo=0)},
    "job": {"job": F(dict, required=True)},
    "jobs": {"jobs": F(list, required=True, max_len=1000)},
    "progress": {"job": _JOB, "stage": _str(64, required=True), "step": F(int, required=True, lo=0),
                 "total": F(int, required=True, lo=0), "losses": F(dict), "eta_s": F(float, lo=0, nullable=True),
                 "worker": _str(200)},
    "result": {"job": _JOB, "glb_path": _str(4096), "stats": F(dict)},
    "error": {"job": F(str, pattern=JOB_ID), "code": _str(64, required=True, pattern=_NAME),
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


# ---------------------------------------------------------------------------------------------- arrays


@dataclass(frozen=True)
class ArrayRule:
    dtypes: frozenset
    columns: int | None  # shape [N, columns], 0 for [N]; None: any shape
    max_rows: int = 0
    finite: bool = False
    image: bool = False  # [H, W, 3], each side in [1, MAX_IMAGE_SIDE]


_VERTS = ArrayRule(frozenset({"float32"}), 3, MAX_VERTICES, finite=True)
_FACES = ArrayRule(frozenset({"int32", "int64"}), 3, MAX_FACES)
_UVS = ArrayRule(frozenset({"float32"}), 2, MAX_VERTICES, finite=True)
_MESH = {"vertices": _VERTS, "faces": _FACES, "uvs": _UVS}
# paint only these triangles (indices into `faces`); absent: the whole mesh
_SELECTED_FACES = ArrayRule(frozenset({"int32", "int64"}), 0, MAX_FACES)
# a painted mesh is split along UV seams: vertex_map[i] is the input vertex that output vertex i copies
_VERTEX_MAP = ArrayRule(frozenset({"int32", "int64"}), 0, MAX_VERTICES)
_ANY = ArrayRule(DTYPES, None)
CHECKPOINT_PREFIX = "ckpt."  # arrays of a checkpoint are named ckpt.0, ckpt.1, ...
# a paint's appearance: how each face looks now, so that what is not painted is kept (see PROTOCOL.md)
_APPEARANCE = {
    "face_slots": ArrayRule(frozenset({"int32", "int64"}), 0, MAX_FACES),  # [F] each face's material slot
    "slot_colors": ArrayRule(frozenset({"float32"}), 3, MAX_SLOTS, finite=True),  # [S, 3] linear RGB
    "slot_sources": ArrayRule(frozenset({"int32", "int64"}), 0, MAX_SLOTS),  # [S] image k, -1 flat, -2 corners
    "image_uvs": ArrayRule(frozenset({"float32"}), 2, 3 * MAX_FACES, finite=True),  # [3F, 2] per corner
    "corner_colors": ArrayRule(frozenset({"float32"}), 3, 3 * MAX_FACES, finite=True),  # [3F, 3] linear RGB
}
IMAGE_ARRAY = re.compile(r"image\.(\d{1,2})\.(\d{4})")  # image.<k>.<UDIM tile>: [H, W, 3], row 0 at v = 1
# uint8: sRGB bytes; float: linear values
_IMAGE = ArrayRule(frozenset({"uint8", "float16", "float32"}), None, finite=True, image=True)
TILE_BLOB = re.compile(r"tile\.(\d{4})")  # a paint result's UDIM tile: PNG

ARRAYS: dict[str, dict[str, ArrayRule]] = {"submit": {**_MESH, "selected_faces": _SELECTED_FACES, **_APPEARANCE},
                                          "result": {**_MESH, "vertex_map": _VERTEX_MAP},
                                          "task": {**_MESH, "selected_faces": _SELECTED_FACES, **_APPEARANCE}}
CHECKPOINT_ARRAYS = frozenset({"task", "checkpoint"})
IMAGE_ARRAYS = frozenset({"submit", "task"})
BLOBS: dict[str, dict[str, int]] = {
    "progress": {"preview": MAX_PREVIEW_BYTES},
    "result": {"texture": 1 << 30, "glb": 2 << 30},
}
TILE_BLOBS = frozenset({"result"})
MAX_TILE_BYTES = 1 << 30


def image_index(name: str) -> tuple[int, int] | None:
    """(k, tile) of an appearance image array's name, or None."""
    found = IMAGE_ARRAY.fullmatch(name)
    return None if found is None else (int(found.group(1)), int(found.group(2)))


def _blob_limit(kind: str, name: str) -> int | None:
    if kind in TILE_BLOBS and TILE_BLOB.fullmatch(name) and FIRST_TILE <= int(name[5:]) <= LAST_TILE:
        return MAX_TILE_BYTES
    return BLOBS.get(kind, {}).get(name)


def _array_rule(kind: str, name: str) -> ArrayRule:
    if kind in CHECKPOINT_ARRAYS and name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX):].isdigit():
        return _ANY
    if kind in IMAGE_ARRAYS and image_index(name) is not None:
        return _IMAGE
    rule = ARRAYS.get(kind, {}).get(name)
    if rule is None:
        raise ProtocolError("bad_array", f"{a_or_an(kind)} message carries no array named {name!r}")
    return rule


def _check_array(name: str, rule: ArrayRule, array: np.ndarray) -> None:
    if array.dtype.name not in rule.dtypes:
        raise ProtocolError("bad_array", f"array {name!r} must be {' or '.join(sorted(rule.dtypes))}, "
                                         f"got {array.dtype.name}")
    if rule.columns is not None:
        expected = (None, rule.columns) if rule.columns else (None,)
        if array.shape[1:] != expected[1:] or array.ndim != len(expected):
            shape = f"[N, {rule.columns}]" if rule.columns else "[N]"
            raise ProtocolError("bad_array", f"array {name!r} must have shape {shape}, got {list(array.shape)}")
        if array.shape[0] > rule.max_rows:
            raise ProtocolError("too_large", f"array {name!r} has {array.shape[0]:,} rows, over the limit "
                                             f"of {rule.max_rows:,}")
    if rule.image and (array.ndim != 3 or array.shape[2] != 3 or not
                           (1 <= array.shape[0] <= MAX_IMAGE_SIDE and 1 <= array.shape[1] <= MAX_IMAGE_SIDE)):
        raise ProtocolError("bad_array", f"array {name!r} must be an RGB image [H, W, 3] with sides in "
                                         f"[1, {MAX_IMAGE_SIDE}], got {list(array.shape)}")
    if rule.finite and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ProtocolError("bad_array", f"array {name!r} contains NaN or infinite values")


def check_arrays(kind: str, arrays: dict[str, np.ndarray]) -> None:
    """Names, shapes, row limits and finiteness of the arrays of a `kind` message."""
    for name, array in arrays.items():
        _check_array(name, _array_rule(kind, name), array)


def check_mesh_arrays(task: str, arrays: dict[str, np.ndarray]) -> None:
    """The arrays a submit of `task` needs (its catalogue entry's `mesh`): a sketch is optional vertices and faces,
    a mesh to paint required vertices and faces with optional UVs and face selection."""
    have, kind = set(arrays), TASKS[task].mesh
    if kind == "sketch" and have not in (set(), {"vertices", "faces"}):
        raise ProtocolError("bad_array", f"a {task} sketch needs both 'vertices' and 'faces' (and no 'uvs')")
    if kind == "paint" and not {"vertices", "faces"} <= have:
        raise ProtocolError("bad_array", f"a {task} job needs the mesh's 'vertices' and 'faces'")
    if "faces" in arrays:
        faces, n = arrays["faces"], len(arrays["vertices"])
        if faces.size and (int(faces.min()) < 0 or int(faces.max()) >= n):
            raise ProtocolError("bad_array", f"'faces' index vertices outside [0, {n})")
    if "uvs" in arrays and len(arrays["uvs"]) != len(arrays["vertices"]):
        raise ProtocolError("bad_array", "'uvs' must have one [u, v] row per vertex")
    if "selected_faces" in arrays:
        selected, n = arrays["selected_faces"], len(arrays.get("faces", ()))
        if kind != "paint":
            raise ProtocolError("bad_array", "'selected_faces' belongs to paint jobs only")
        if not selected.size:
            raise ProtocolError("bad_array", "'selected_faces' is empty: select at least one face to paint")
        if int(selected.min()) < 0 or int(selected.max()) >= n:
            raise ProtocolError("bad_array", f"'selected_faces' index faces outside [0, {n})")
    check_appearance(task, arrays)


def check_appearance(task: str, arrays: dict[str, np.ndarray]) -> None:
    """A paint submit's appearance arrays agree with each other and with its mesh (see PROTOCOL.md)."""
    images = {name: index for name in arrays if (index := image_index(name)) is not None}
    present = [name for name in (*_APPEARANCE, *images) if name in arrays]
    if not present:
        return
    if TASKS[task].mesh != "paint":
        raise ProtocolError("bad_array", f"{present[0]!r} belongs to paint jobs only")
    missing = [name for name in ("face_slots", "slot_colors", "slot_sources") if name not in arrays]
    if missing:
        raise ProtocolError("bad_array", f"a paint's appearance needs {missing[0]!r} beside {present[0]!r}")
    n_faces, slots, sources = len(arrays["faces"]), len(arrays["slot_colors"]), arrays["slot_sources"]
    face_slots = arrays["face_slots"]
    if len(face_slots) != n_faces:
        raise ProtocolError("bad_array", f"'face_slots' must have one slot per face ({n_faces}), got {len(face_slots)}")
    if len(sources) != slots or not slots:
        raise ProtocolError("bad_array", f"'slot_sources' must have one row per row of 'slot_colors' ({slots})")
    if n_faces and (int(face_slots.min()) < 0 or int(face_slots.max()) >= slots):
        raise ProtocolError("bad_array", f"'face_slots' index slots outside [0, {slots})")
    if len(images) > MAX_IMAGES:
        raise ProtocolError("too_large", f"{len(images)} image arrays, over the limit of {MAX_IMAGES}")
    sent = {k for k, _ in images.values()}
    used = {int(k) for k in sources if k >= 0}
    if int(sources.min()) < -2 or sent != used:
        raise ProtocolError("bad_array", "'slot_sources' must hold -2, -1 or the index k of an image sent as "
                                         "'image.<k>.<tile>', and every image sent must be used")
    bad_tile = [name for name, (_, tile) in images.items() if not FIRST_TILE <= tile <= LAST_TILE]
    if bad_tile:
        raise ProtocolError("bad_array", f"array {bad_tile[0]!r} names no UDIM tile ({FIRST_TILE}-{LAST_TILE})")
    for name, source in (("image_uvs", used), ("corner_colors", -2 in set(sources.tolist()))):
        if bool(source) != (name in arrays):
            raise ProtocolError("bad_array", f"'{name}' must be sent exactly when a slot's source needs it")
        if name in arrays and len(arrays[name]) != 3 * n_faces:
            raise ProtocolError("bad_array", f"'{name}' must have one row per face corner ({3 * n_faces}), "
                                             f"got {len(arrays[name])}")


# ------------------------------------------------------------------------------------------ encode/decode


def encode(kind: str, fields: dict[str, Any] | None = None, arrays: dict[str, np.ndarray] | None = None,
           blobs: dict[str, bytes] | None = None) -> Frames:
    """Frames of one message. Arrays are sent as little-endian C-contiguous buffers."""
    if kind not in MESSAGE_TYPES:
        raise ValueError(f"unknown message type {kind!r}")
    header: dict[str, Any] = {"v": VERSION, "type": kind, **(fields or {})}
    frames: Frames = []
    specs = []
    for name, array in (arrays or {}).items():
        array = np.asarray(array)
        if array.dtype.name not in DTYPES:
            raise ValueError(f"array {name!r} has dtype {array.dtype}, not one of {sorted(DTYPES)}")
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        specs.append({"name": name, "dtype": array.dtype.name, "shape": list(array.shape)})
        # flat bytes without a copy; via a 1-D view because memoryview cannot cast a zero-size N-d buffer
        frames.append(memoryview(array.reshape(-1).view(np.uint8)))
    header["arrays"] = specs
    header["blobs"] = [{"name": name, "size": len(data)} for name, data in (blobs or {}).items()]
    frames.extend(bytes(data) if not isinstance(data, bytes) else data for data in (blobs or {}).values())
    head = json.dumps(header, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return [head, *frames]


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def _parse_header(frame: bytes, limits: Limits) -> dict[str, Any]:
    if len(frame) > limits.max_header_bytes:
        raise ProtocolError("too_large", f"the header is {len(frame):,} bytes, over {limits.max_header_bytes:,}")
    try:
        header = json.loads(bytes(frame).decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError("bad_message", f"frame 0 is not UTF-8 JSON: {str(exc)[:200]}") from None
    if not isinstance(header, dict):
        raise ProtocolError("bad_message", "frame 0 must be a JSON object")
    return header


def valid_text(text: str) -> bool:
    """False for a str that UTF-8 cannot encode: JSON's `\\ud800` escapes decode to such lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def invalid_text(value: Any, path: str = "header") -> str | None:
    """Where in a parsed JSON value a key or a string is not valid Unicode, or None."""
    if isinstance(value, str):
        return None if valid_text(value) else path
    if isinstance(value, dict):
        for key, item in value.items():
            if not valid_text(key):
                return f"a key in {path}"
            where = invalid_text(item, f"{path}.{key}")
            if where is not None:
                return where
    elif isinstance(value, list):
        for i, item in enumerate(value):
            where = invalid_text(item, f"{path}[{i}]")
            if where is not None:
                return where
    return None


def printable(text: str) -> str:
    """`text` with anything UTF-8 cannot encode replaced by U+FFFD, so that a reply quoting it always encodes."""
    return text if valid_text(text) else _SURROGATE.sub("\ufffd", text)


def _frame_specs(header: dict[str, Any], key: str, keys: Sequence[str]) -> list[dict]:
    specs = header.get(key, [])
    if not isinstance(specs, list) or not all(
            isinstance(s, dict) and set(s) == set(keys) for s in specs):
        raise ProtocolError("bad_frames", f"'{key}' must be a list of objects with keys {', '.join(keys)}")
    names = [s["name"] for s in specs]
    if not all(isinstance(n, str) and _NAME.fullmatch(n) for n in names) or len(set(names)) != len(names):
        raise ProtocolError("bad_frames", f"'{key}' names must be unique identifiers")
    return specs


def _decode_array(spec: dict, frame: bytes, limits: Limits) -> np.ndarray:
    name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ProtocolError("bad_array", f"array {name!r} has dtype {str(dtype)[:20]!r}, not one of "
                                         f"{', '.join(sorted(DTYPES))}")
    if (not isinstance(shape, list) or len(shape) > limits.max_ndim
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise ProtocolError("bad_array", f"array {name!r} needs a shape of at most {limits.max_ndim} "
                                         "non-negative integers")
    dt = np.dtype(dtype).newbyteorder("<")
    declared = math.prod(shape) * dt.itemsize
    # the nonzero dimensions are bounded too: [0, 10**9, 10**9] holds no bytes but numpy cannot shape it
    if max(declared, math.prod(d for d in shape if d) * dt.itemsize) > limits.max_array_bytes:
        raise ProtocolError("too_large", f"array {name!r} declares {declared:,} bytes, over "
                                         f"{limits.max_array_bytes:,}")
    if declared != len(frame):
        raise ProtocolError("bad_frames", f"array {name!r} declares {declared:,} bytes but its frame has "
                                          f"{len(frame):,}")
    array = np.frombuffer(frame, dtype=dt).reshape(shape)
    return array if dt.isnative else array.astype(dt.newbyteorder("="))


def decode(frames: Sequence[bytes], limits: Limits = REQUEST_LIMITS,
           accept: frozenset[str] | None = None) -> Message:
    """Parse and validate one message; raises ProtocolError. `accept`: the types this side takes."""
    if not frames:
        raise ProtocolError("bad_frames", "an empty message")
    header = _parse_header(frames[0], limits)  # errors before this point cannot carry the request's id
    rid = header.get("id")
    try:
        where = invalid_text(header)
        if where is not None:
            raise ProtocolError("bad_message", f"frame 0 holds text that is not valid Unicode ({where}: a lone "
                                               "UTF-16 surrogate, \\ud800-\\udfff); send well-formed text")
        if len(frames) > limits.max_frames + 1:
            raise ProtocolError("too_large", f"{len(frames)} frames, over the limit of {limits.max_frames + 1}")
        total = sum(len(f) for f in frames)
        if total > limits.max_message_bytes:
            raise ProtocolError("too_large", f"the message is {total:,} bytes, over {limits.max_message_bytes:,}")
        return _decode_header(header, frames, limits, accept)
    except ProtocolError as exc:
        # the request id lets the sender match the error to its request, when it is well formed
        exc.request_id = rid if isinstance(rid, str) and REQUEST_ID.fullmatch(rid) else None
        raise


def _decode_header(header: dict[str, Any], frames: Sequence[bytes], limits: Limits,
                   accept: frozenset[str] | None) -> Message:
    if type(header.get("v")) is not int or header["v"] != VERSION:  # 1.0 and true are not versions
        raise ProtocolError("unsupported_version", f"protocol version {str(header.get('v'))[:20]!r} is not "
                                                   f"supported; this peer speaks v{VERSION}")
    kind = header.get("type")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {str(kind)[:40]!r}")
    if accept is not None and kind not in accept:
        raise ProtocolError("unexpected_type", f"{a_or_an(kind)} message is not accepted here; send one of "
                                               f"{', '.join(sorted(accept))}")
    array_specs = _frame_specs(header, "arrays", ("name", "dtype", "shape"))
    blob_specs = _frame_specs(header, "blobs", ("name", "size"))
    if len(frames) != 1 + len(array_specs) + len(blob_specs):
        raise ProtocolError("bad_frames", f"the header describes {len(array_specs)} arrays and "
                                          f"{len(blob_specs)} blobs but {len(frames) - 1} frames follow")
    fields = {k: v for k, v in header.items() if k not in ("v", "type", "arrays", "blobs")}
    check_fields(kind, fields, limits)
    message = Message(kind, fields)
    for spec, frame in zip(array_specs, frames[1:], strict=False):
        _array_rule(kind, spec["name"])  # an unexpected name is refused before its frame is read
        message.arrays[spec["name"]] = _decode_array(spec, frame, limits)
    check_arrays(kind, message.arrays)
    for spec, frame in zip(blob_specs, frames[1 + len(array_specs):], strict=True):
        name, size = spec["name"], spec["size"]
        limit = _blob_limit(kind, name)
        if limit is None:
            raise ProtocolError("bad_frames", f"{a_or_an(kind)} message carries no blob named {name!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size != len(frame):
            raise ProtocolError("bad_frames", f"blob {name!r} declares {str(size)[:20]} bytes but its frame "
                                              f"has {len(frame):,}")
        if size > limit:
            raise ProtocolError("too_large", f"blob {name!r} is over {limit:,} bytes")
        message.blobs[name] = bytes(frame)
    if kind == "submit":
        check_mesh_arrays(fields["task"], message.arrays)
    return message


def error_fields(code: str, message: str, hint: str | None = None, request_id: str | None = None,
                 job: str | None = None, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fields of an error message, trimmed to the protocol's limits."""
    fields: dict[str, Any] = {"code": code if code in ERROR_CODES else "job_failed",
                              "message": printable(message[:4000])}
    if hint:
        fields["hint"] = printable(hint[:4000])
    if details:
        fields["details"] = details
    if request_id is not None:
        fields["id"] = request_id
    if job is not None:
        fields["job"] = job
    return fields
