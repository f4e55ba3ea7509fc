"""The protocol's vocabulary: its version, message types, job states, error codes, size limits, and the
message and error types every other part uses."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...catalog import TASKS

VERSION = 1
MAX_PREVIEW_BYTES = 4 << 20
MAX_SLOTS = 32767  # a paint submit's material slots: Blender's limit
MAX_IMAGES = 64  # image arrays (images × UDIM tiles) one paint submit may carry
MAX_IMAGE_SIDE = 16384
FIRST_TILE, LAST_TILE = 1001, 1999  # UDIM tile numbers: ten per row, 99 rows
MAX_GROUP = 1000  # variants one submit may ask for, at most (each service has its own, lower, ceiling)
LIVENESS = 5  # heartbeat intervals of silence after which the service counts a worker as gone

CLIENT_REQUESTS = frozenset({"hello", "submit", "status", "list", "cancel", "fetch", "reexport", "finish",
                             "heartbeat"})
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
    "not_finishable": "a finish of a job that is not a variant's draft (or whose draft failed or was cancelled)",
}

NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")
REQUEST_ID = re.compile(r"[\x21-\x7e]{1,64}")  # printable ASCII, no spaces
JOB_ID = re.compile(r"[0-9a-f]{32}")  # uuid4 hex: cannot name a path outside the jobs folder
SURROGATE = re.compile("[\ud800-\udfff]")


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
