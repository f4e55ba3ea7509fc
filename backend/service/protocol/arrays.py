"""Arrays and blobs: which a message may carry, their dtypes, shapes and sizes, and how a submit's mesh,
face selection and appearance arrays must agree with each other."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ...catalog import MAX_FACES, MAX_VERTICES, TASKS
from .base import (
    DTYPES,
    FIRST_TILE,
    LAST_TILE,
    MAX_IMAGE_SIDE,
    MAX_IMAGES,
    MAX_PREVIEW_BYTES,
    MAX_SLOTS,
    ProtocolError,
    a_or_an,
)


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
    "result": {"texture": 1 << 30, "glb": 2 << 30, "normal_map": 1 << 30},  # a refined mesh's normal map
}
TILE_BLOBS = frozenset({"result"})
MAX_TILE_BYTES = 1 << 30


def image_index(name: str) -> tuple[int, int] | None:
    """(k, tile) of an appearance image array's name, or None."""
    found = IMAGE_ARRAY.fullmatch(name)
    return None if found is None else (int(found.group(1)), int(found.group(2)))


def blob_limit(kind: str, name: str) -> int | None:
    if kind in TILE_BLOBS and TILE_BLOB.fullmatch(name) and FIRST_TILE <= int(name[5:]) <= LAST_TILE:
        return MAX_TILE_BYTES
    return BLOBS.get(kind, {}).get(name)


def array_rule(kind: str, name: str) -> ArrayRule:
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
        _check_array(name, array_rule(kind, name), array)


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
