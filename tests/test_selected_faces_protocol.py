"""The optional `selected_faces` array of a paint submit: checked before a job is accepted."""

from __future__ import annotations

import numpy as np
import pytest

from backend.service.protocol import ProtocolError, check_arrays, check_mesh_arrays, decode, encode

MESH = {"vertices": np.zeros((4, 3), np.float32), "faces": np.array([[0, 1, 2], [0, 2, 3]], np.int64)}


def test_selected_faces_travel_with_a_paint_submit():
    arrays = {**MESH, "selected_faces": np.array([1], np.int64)}
    message = decode([bytes(f) for f in encode("submit", {"id": "r1", "task": "paint", "prompt": "x"}, arrays)])
    np.testing.assert_array_equal(message.arrays["selected_faces"], [1])


@pytest.mark.parametrize(("selected", "task", "message"), [
    (np.array([], np.int64), "paint", "empty"),
    (np.array([0, 2], np.int64), "paint", r"outside \[0, 2\)"),
    (np.array([-1], np.int32), "paint", r"outside \[0, 2\)"),
    (np.array([0], np.int64), "generate", "generate sketch needs both"),
])
def test_bad_selections_are_refused(selected, task, message):
    arrays = {**MESH, "selected_faces": selected}
    check_arrays("submit", arrays)
    with pytest.raises(ProtocolError, match=message):
        check_mesh_arrays(task, arrays)


def test_selected_faces_must_be_a_flat_integer_array():
    with pytest.raises(ProtocolError, match="must be int32 or int64"):
        check_arrays("submit", {**MESH, "selected_faces": np.array([0.0], np.float32)})
    with pytest.raises(ProtocolError, match=r"must have shape \[N\]"):
        check_arrays("submit", {**MESH, "selected_faces": np.zeros((1, 2), np.int64)})
