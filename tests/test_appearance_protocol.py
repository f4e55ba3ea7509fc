"""A paint submit's appearance (how each face looks now): its arrays are checked before a job is accepted,
and the service reads their linear colours as the display values a viewer shows."""

from __future__ import annotations

import numpy as np
import pytest

from backend.service.protocol import MAX_IMAGES, ProtocolError, check_arrays, check_mesh_arrays, decode, encode
from backend.tasks.appearance import Appearance

MESH = {"vertices": np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], np.float32),
        "faces": np.array([[0, 1, 2], [1, 3, 2]], np.int32)}


def appearance(**changes) -> dict[str, np.ndarray]:
    """Slot 0 an image (one byte image, tile 1001), slot 1 a flat linear colour, slot 2 corner colours."""
    arrays = {"face_slots": np.array([0, 1], np.int32), "slot_colors": np.array([[0.2, 0.6, 0.8]] * 3, np.float32),
              "slot_sources": np.array([0, -1, -2], np.int32),
              "image_uvs": np.zeros((6, 2), np.float32), "corner_colors": np.full((6, 3), 0.2, np.float32),
              "image.0.1001": np.zeros((4, 8, 3), np.uint8)}
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


def test_an_appearance_travels_with_a_paint_submit_and_is_read_as_display_colours():
    arrays = {**MESH, **appearance(**{"image.0.1001": np.full((2, 2, 3), 0.2, np.float16)})}
    message = decode([bytes(f) for f in encode("submit", {"id": "r1", "task": "paint", "prompt": "x"}, arrays)])
    look = Appearance.from_wire(message.arrays)
    np.testing.assert_array_equal(np.round(look.colors * 255), [[124, 203, 231]] * 3)  # linear → sRGB
    assert look.images[0][1001].dtype == np.uint8 and (look.images[0][1001] == 124).all()  # float images are linear
    assert look.image_uvs.shape == (2, 3, 2) and np.round(look.corner_colors[0, 0, 0] * 255) == 124


@pytest.mark.parametrize(("changes", "message"), [
    ({"face_slots": np.array([0], np.int32)}, "one slot per face"),
    ({"face_slots": np.array([0, 3], np.int32)}, r"index slots outside \[0, 3\)"),
    ({"slot_sources": np.array([0, -1], np.int32)}, "one row per row of 'slot_colors'"),
    ({"slot_sources": np.array([1, -1, -2], np.int32)}, "every image sent must be used"),
    ({"slot_sources": np.array([0, -3, -2], np.int32)}, "must hold -2, -1 or the index k"),
    ({"image.1.1001": np.zeros((2, 2, 3), np.uint8)}, "every image sent must be used"),
    ({"image_uvs": None}, "'image_uvs' must be sent exactly when"),
    ({"image_uvs": np.zeros((3, 2), np.float32)}, "one row per face corner"),
    ({"slot_sources": np.array([0, -1, -1], np.int32)}, "'corner_colors' must be sent exactly when"),
    ({"slot_colors": None}, "needs 'slot_colors'"),
    ({"image.0.1001": None, "image.0.0999": np.zeros((2, 2, 3), np.uint8)}, "names no UDIM tile"),
])
def test_an_appearance_that_disagrees_with_itself_or_the_mesh_is_refused(changes, message):
    arrays = {**MESH, **appearance(**changes)}
    check_arrays("submit", arrays)
    with pytest.raises(ProtocolError, match=message):
        check_mesh_arrays("paint", arrays)


@pytest.mark.parametrize(("image", "message"), [
    (np.zeros((4, 4), np.uint8), r"RGB image \[H, W, 3\]"),
    (np.zeros((4, 4, 4), np.uint8), r"RGB image \[H, W, 3\]"),
    (np.full((2, 2, 3), np.nan, np.float32), "NaN or infinite"),
    (np.zeros((2, 2, 3), np.int32), "must be float16 or float32 or uint8"),
])
def test_an_image_must_be_a_finite_rgb_array(image, message):
    with pytest.raises(ProtocolError, match=message):
        check_arrays("submit", {**MESH, **appearance(**{"image.0.1001": image})})


def test_appearance_arrays_belong_to_paint_and_their_count_is_capped():
    with pytest.raises(ProtocolError, match="generate sketch needs both"):
        check_mesh_arrays("generate", {**MESH, **appearance()})
    many = {f"image.{k}.1001": np.zeros((1, 1, 3), np.uint8) for k in range(MAX_IMAGES + 1)}
    arrays = {**MESH, **appearance(slot_sources=np.arange(MAX_IMAGES + 1, dtype=np.int32),
                                   slot_colors=np.zeros((MAX_IMAGES + 1, 3), np.float32), corner_colors=None,
                                   **{"image.0.1001": None}), **many}
    with pytest.raises(ProtocolError, match=f"over the limit of {MAX_IMAGES}"):
        check_mesh_arrays("paint", arrays)
    with pytest.raises(ProtocolError, match="carries no array named 'image.0.1001'"):
        check_arrays("result", {"image.0.1001": np.zeros((1, 1, 3), np.uint8)})
