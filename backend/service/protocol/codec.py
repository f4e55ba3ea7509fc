"""Frames: a message encoded as a JSON header and raw little-endian buffers, and decoded and validated back,
with every limit applied before anything large is read."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .arrays import array_rule, blob_limit, check_arrays, check_image_blob, check_mesh_arrays, check_result_arrays
from .base import (
    DTYPES,
    ERROR_CODES,
    MESSAGE_TYPES,
    NAME_PATTERN,
    REQUEST_ID,
    REQUEST_LIMITS,
    SURROGATE,
    VERSION,
    Frames,
    Limits,
    Message,
    ProtocolError,
    a_or_an,
)
from .fields import check_fields


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
    return text if valid_text(text) else SURROGATE.sub("\ufffd", text)


def _frame_specs(header: dict[str, Any], key: str, keys: Sequence[str]) -> list[dict]:
    specs = header.get(key, [])
    if not isinstance(specs, list) or not all(
            isinstance(s, dict) and set(s) == set(keys) for s in specs):
        raise ProtocolError("bad_frames", f"'{key}' must be a list of objects with keys {', '.join(keys)}")
    names = [s["name"] for s in specs]
    if not all(isinstance(n, str) and NAME_PATTERN.fullmatch(n) for n in names) or len(set(names)) != len(names):
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
        array_rule(kind, spec["name"])  # an unexpected name is refused before its frame is read
        message.arrays[spec["name"]] = _decode_array(spec, frame, limits)
    check_arrays(kind, message.arrays)
    for spec, frame in zip(blob_specs, frames[1 + len(array_specs):], strict=True):
        name, size = spec["name"], spec["size"]
        limit = blob_limit(kind, name)
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
        check_image_blob(fields, message.blobs)
    if kind == "result":
        check_result_arrays(message.arrays, message.blobs)
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
