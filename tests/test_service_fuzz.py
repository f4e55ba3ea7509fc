"""Malformed messages against a live service: each gets an error reply (or is dropped), and it keeps serving."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.service import protocol

pytestmark = pytest.mark.timeout(300)

EXAMPLES = 1100
VALID = {
    "hello": {"client": "fuzz"},
    "submit": {"task": "generate", "prompt": "a cube"},
    "status": {"job": "0" * 32},
    "list": {"limit": 5},
    "cancel": {"job": "0" * 32},
    "fetch": {"job": "0" * 32},
    "reexport": {"job": "0" * 32, "export": {"density_threshold": 1.0}},
    "heartbeat": {},
}
PATH_IDS = ["../../etc/passwd", "..", "/", "~/x", "a" * 32 + "/..", "A" * 32, "0" * 31, "0" * 33, "0" * 31 + "/",
            "..%2f..%2f" + "0" * 22, "\\..\\" + "0" * 28, "0" * 16 + "/../" + "0" * 12, "0" * 32 + "\x00", ""]

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                        max_size=4), max_leaves=8)


def header(kind: str, **changes: object) -> dict:
    return {"v": 1, "type": kind, "id": "f1", **VALID[kind], "arrays": [], "blobs": [], **changes}


def frames_of(head: dict, *rest: bytes) -> list[bytes]:
    return [json.dumps(head).encode(), *rest]


@st.composite
def malformed(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    """(category, frames) of a message that breaks the protocol in one way; "field" ones may be valid."""
    category = draw(st.sampled_from(["raw", "json", "version", "type", "field", "job_id", "frames", "shape", "nan",
                                     "blob"]))
    kind = draw(st.sampled_from(sorted(VALID)))
    if category == "raw":
        return category, draw(st.lists(st.binary(max_size=64), min_size=1, max_size=4))
    if category == "json":
        value = draw(st.one_of(st.text(max_size=40).map(str.encode), json_values.filter(
            lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),
            st.just(b'{"v": 1, "type": "hello", "x": NaN}'), st.just(b"[" * 5000), st.just(b"\xff\xfe{}")))
        return category, [value]
    if category == "version":
        return category, frames_of(header(kind, v=draw(json_values.filter(lambda v: v != 1 or v is True))))
    if category == "type":
        other = draw(st.one_of(json_values, st.sampled_from(["welcome", "task", "ready", "checkpoint", "result"])))
        return category, frames_of(header(kind, type=other))
    if category == "field":
        head = header(kind)
        if draw(st.booleans()) and len(VALID[kind]):
            del head[draw(st.sampled_from(sorted(VALID[kind])))]
        else:
            head[draw(st.sampled_from(["job", "prompt", "task", "limit", "seed", "overrides", "watch", "id", "zz"]))] \
                = draw(json_values)
        return category, frames_of(head)
    if category == "job_id":
        job = draw(st.one_of(st.sampled_from(PATH_IDS), st.text(max_size=40)).filter(
            lambda j: not protocol.JOB_ID.fullmatch(j)))
        return category, frames_of(header(draw(st.sampled_from(["status", "cancel", "fetch", "reexport"])), job=job))
    if category == "frames":  # frame counts that disagree with the header
        spec = {"name": "vertices", "dtype": "float32", "shape": [1, 3]}
        declared = draw(st.integers(0, 3))
        sent = draw(st.integers(0, 3).filter(lambda n: n != declared))
        return category, frames_of(header("submit", arrays=[dict(spec, name=f"a{i}") for i in range(declared)]),
                                   *([b"\0" * 12] * sent))
    if category == "shape":  # huge, negative, mistyped shapes or dtypes, with a small frame
        shape = draw(st.one_of(st.lists(st.integers(-5, 10**15), min_size=1, max_size=6), json_values))
        dtype = draw(st.one_of(st.sampled_from(["float32", "object", "<f4", "complex128", "V8"]), json_values))
        spec = {"name": draw(st.sampled_from(["vertices", "faces", "../x", "uvs"])), "dtype": dtype, "shape": shape}
        if spec["dtype"] == "float32" and isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape):
            spec["shape"] = [*shape, 10**12]  # never a real, well-formed array
        return category, frames_of(header("submit", arrays=[spec]), b"\0" * draw(st.integers(0, 48)))
    if category == "nan":  # well-formed frames with values no mesh can have
        bad = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        vertices = np.eye(3, dtype=np.float32)
        vertices[draw(st.integers(0, 2)), draw(st.integers(0, 2))] = bad
        faces = np.array([[0, 1, draw(st.sampled_from([2, 3, -1, 2**31 - 1]))]], np.int32)
        return category, [bytes(f) for f in protocol.encode("submit", {"id": "f1", **VALID["submit"]},
                                                           {"vertices": vertices, "faces": faces})]
    # blob: blobs no request takes, or sizes that lie
    size = draw(st.integers(0, 32))
    blob = {"name": draw(st.sampled_from(["preview", "texture", "glb", "x"])), "size": draw(st.one_of(
        st.just(size + 1), json_values))}
    return category, frames_of(header(kind, blobs=[blob]), b"\0" * size)


@pytest.fixture(scope="module")
def service(start_service):  # noqa: ANN001, ANN201
    return start_service(workers=0)


def test_a_thousand_malformed_messages_leave_the_service_answering(service) -> None:  # noqa: ANN001
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(service.endpoint)
    counts = {"sent": 0, "error": 0, "other": 0, "dropped": 0}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(malformed())
    def send(case: tuple[str, list[bytes]]) -> None:
        category, frames = case
        sock.send_multipart(frames)
        counts["sent"] += 1
        if not sock.poll(2000):
            counts["dropped"] += 1
            return
        reply = protocol.decode(sock.recv_multipart(), protocol.TRUSTED_LIMITS, protocol.SERVER_REPLIES)
        if reply.type == "error":
            counts["error"] += 1
            assert reply.fields["code"] in protocol.ERROR_CODES and reply.fields["code"] != "internal", reply.fields
        else:
            counts["other"] += 1
            assert category == "field", (category, frames[:1], reply)  # only those can happen to be valid

    send()
    sock.close()
    assert counts["sent"] >= 1000 and counts["error"] >= 900, counts
    assert service.process.poll() is None and "Traceback" not in service.log(), service.log()
    with service.client() as client:
        assert client.hello()["protocol"] == 1
        assert client.list() is not None
    print(f"fuzz: {counts}")
