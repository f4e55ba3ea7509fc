"""Schema-driven fuzz of a live service: every submit field and every setting `overrides` can reach, each
given hostile values (wrong types, past its ceiling, paths, text that is not Unicode, unknown neighbours).
The service answers each one, never with `internal`, never lets a ceiling or a path through, and runs a
valid job afterwards."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
import zmq
from conftest import SERVICE_TINY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.service import protocol, schema
from backend.tasks.generate import GenerateConfig
from backend.tasks.paint import PaintConfig

pytestmark = pytest.mark.timeout(600)

MESSAGES = 2000
TINY_PAINT = {"resolution": 16, "iters": 10, "texture_size": 64, "loop": {"checkpoint_every": 10}}
MESH = {"vertices": np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32), "faces": np.array([[0, 1, 2]], np.int32),
        "uvs": np.array([[0, 0], [1, 0], [0, 1]], np.float32)}
BASE = {"generate": SERVICE_TINY, "paint": TINY_PAINT}
SETTINGS = {"generate": schema.settings(GenerateConfig), "paint": schema.settings(PaintConfig)}
FIELDS = {"prompt": str, "negative": str, "seed": int, "iterations": int, "method": str, "preset": str, "model": str,
          "watch": bool, "overrides": dict}
TARGETS = [(task, "field", name) for task in BASE for name in FIELDS] + [
    (task, "setting", path) for task, known in SETTINGS.items() for path in known]

texts = st.one_of(st.just("\ud800"), st.just("a\udfffb"), st.just("x" * 5000), st.just("/etc/passwd"),
                  st.just("../../../root"), st.just("C:\\Windows"), st.just("hf-user/some-model"), st.just(""),
                  st.text(max_size=12))
junk = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False), texts,
                 st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
huge = st.sampled_from([2**63, 2**70, -(2**70), 10**12, 10**400, -1])


def hostile(kind: Any, setting: schema.Setting | None) -> st.SearchStrategy:
    """Values that no setting of this kind should accept (and a few that it may)."""
    if setting is not None and setting.forbidden:
        return texts
    if kind is int:
        above = st.just(setting.ceiling + 1) if setting is not None and setting.ceiling is not None else huge
        return st.one_of(above, huge, junk.filter(lambda v: not isinstance(v, int) or isinstance(v, bool)))
    if kind is float:
        return st.one_of(st.just(10**400), st.just(-1e308), junk.filter(lambda v: not isinstance(v, (int, float))
                                                                        or isinstance(v, bool)))
    if kind is bool:
        return st.one_of(st.just(1), st.just("true"), st.none(), st.lists(st.booleans(), max_size=2))
    if kind is dict:
        return st.one_of(junk.filter(lambda v: not isinstance(v, dict)), st.dictionaries(texts, junk, max_size=3))
    if kind is str:
        return st.one_of(texts, junk.filter(lambda v: not isinstance(v, str)))
    return st.one_of(junk, st.lists(junk, max_size=4))  # tuples and anything newer


@st.composite
def submits(draw: st.DrawFn) -> tuple[dict, bool]:
    """(header, must_refuse): a valid tiny submit with one field or setting made hostile, and sometimes an
    unknown key beside it. must_refuse: the value passes a ceiling or names a path."""
    task, where, name = draw(st.sampled_from(TARGETS))
    header: dict[str, Any] = {"v": 1, "type": "submit", "id": "z", "task": task, "prompt": "a cube", "watch": False,
                              "overrides": copy.deepcopy(BASE[task])}
    setting = SETTINGS[task].get(name) if where == "setting" else None
    value = draw(hostile(FIELDS[name] if where == "field" else setting.type, setting))
    if where == "field":
        header[name] = value
    else:
        node = header["overrides"]
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        if draw(st.integers(0, 9)) == 0:
            node[leaf + draw(st.sampled_from(["_", "x", "\ud800"]))] = 1
    ceiling = setting.ceiling if setting is not None else None
    breach = isinstance(value, int) and not isinstance(value, bool) and ceiling is not None and value > ceiling
    return header, bool(breach or (setting is not None and setting.forbidden and isinstance(value, str)))


def test_two_thousand_hostile_settings_leave_the_service_answering(start_service, service_tiny) -> None:  # noqa: ANN001
    service = start_service()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(service.endpoint)
    counts: dict[str, int] = {"sent": 0, "accepted": 0}

    def ask(header: dict, arrays: dict | None = None) -> protocol.Message:
        frames: list = []
        if arrays:
            encoded = protocol.encode("submit", {}, arrays)
            header, frames = {**header, "arrays": json.loads(encoded[0])["arrays"]}, encoded[1:]
        sock.send_multipart([json.dumps(header).encode("utf-8"), *frames])  # surrogates go as \u escapes
        while True:
            assert sock.poll(10_000), "the service stopped answering"
            reply = protocol.decode(sock.recv_multipart(), protocol.TRUSTED_LIMITS, protocol.SERVER_REPLIES)
            if reply.id == header["id"]:
                return reply

    @settings(max_examples=MESSAGES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(submits())
    def send(case: tuple[dict, bool]) -> None:
        header, must_refuse = case
        reply = ask(header, MESH if header["task"] == "paint" else None)
        counts["sent"] += 1
        if reply.type == "accepted":
            assert not must_refuse, header
            counts["accepted"] += 1
            ask({"v": 1, "type": "cancel", "id": "c", "job": reply.fields["job"]})
            return
        assert reply.type == "error", reply
        code = reply.fields["code"]
        assert code in protocol.ERROR_CODES and code != "internal", (header, reply.fields)
        counts[code] = counts.get(code, 0) + 1

    send()
    sock.close()
    print(f"schema fuzz: {counts}")
    assert counts["sent"] >= MESSAGES and service.process.poll() is None, service.log()
    with service.client() as client:
        job = client.submit("a toadstool", overrides=service_tiny)
        result = client.wait(job, timeout_s=240)
    assert len(result.faces) > 0
    assert "Traceback" not in service.log(), service.log()
