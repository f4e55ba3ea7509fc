"""Attacks on a live `latentforge serve`: each class of hostile input gets a clear error, takes nothing down,
and leaves every other job as it was."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from backend.service import protocol
from backend.service.client import Client, ServiceError
from backend.service.jobs import STATE, JobStore
from backend.service.retention import DEFAULT_MAX_AGE_DAYS, DEFAULT_MAX_DISK_GB

pytestmark = pytest.mark.timeout(180)

SURROGATE = "\\ud800"  # as JSON writes it: a lone UTF-16 surrogate once parsed


class Raw:
    """A bare DEALER that sends hand-written headers (text no well-behaved encoder would produce)."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(endpoint)

    def ask(self, header: str, *frames: bytes) -> protocol.Message:
        self.sock.send_multipart([header.encode("utf-8"), *frames])
        assert self.sock.poll(5000), f"no reply to {header[:120]}"
        return protocol.decode(self.sock.recv_multipart(), protocol.TRUSTED_LIMITS, protocol.SERVER_REPLIES)

    def close(self) -> None:
        self.sock.close()


def refused(call, code: str | tuple[str, ...], *words: str) -> ServiceError:  # noqa: ANN001
    """The ServiceError of `call()`, with `code` and every word of `words` in its message."""
    with pytest.raises(ServiceError) as err:
        call()
    codes = (code,) if isinstance(code, str) else code
    assert err.value.code in codes, (err.value.code, err.value.message)
    for word in words:
        assert word in err.value.message, err.value.message
    return err.value


def still_serving(service, job: str | None = None) -> None:  # noqa: ANN001
    """The service is alive, answers, logged no traceback, and `job` (when given) is still queued."""
    assert service.process.poll() is None, service.log()
    with service.client() as client:
        assert client.hello()["protocol"] == 1
        listed = {j["job"]: j for j in client.list()}
        if job is not None:
            assert listed[job]["state"] == "queued", listed[job]
    assert "Traceback" not in service.log(), service.log()


@pytest.fixture(scope="module")
def idle(start_service, tmp_path_factory):  # noqa: ANN001, ANN201
    """A service without workers (nothing runs), with a job of someone else's waiting in its queue."""
    jobs = tmp_path_factory.mktemp("idle") / "jobs"
    service = start_service("--model", "target:/nowhere/missing.glb", workers=0, jobs=jobs)
    service.jobs = jobs
    with service.client() as client:
        service.bystander = client.submit("a bystander's teapot")
    return service


# ---------------------------------------------------------------------------------------- text


@pytest.mark.parametrize("header", [
    '{"v":1,"type":"submit","id":"s1","task":"generate","prompt":"ok","overrides":{"%s":1}}',
    '{"v":1,"type":"submit","id":"s1","task":"generate","prompt":"a %s cube"}',
    '{"v":1,"type":"submit","id":"s1","task":"generate","prompt":"ok","negative":"%s"}',
    '{"v":1,"type":"submit","id":"s1","task":"generate","prompt":"ok","overrides":{"objective":{"name":"%s"}}}',
    '{"v":1,"type":"hello","id":"s1","client":"%s"}',
    '{"v":1,"type":"list","id":"s1","state":"%s"}',
    '{"v":1,"type":"status","id":"s1","job":"%s"}',
    '{"v":1,"type":"hello","id":"%s"}',
    '{"v":1,"type":"hello","id":"s1","%s":1}',
])
def test_text_that_is_not_unicode_is_refused_and_poisons_nothing(idle, header: str) -> None:  # noqa: ANN001
    raw = Raw(idle.endpoint)
    reply = raw.ask(header % SURROGATE)
    raw.close()
    assert reply.type == "error" and reply.fields["code"] == "bad_message", reply.fields
    assert "Unicode" in reply.fields["message"]
    still_serving(idle, idle.bystander)


# ---------------------------------------------------------------------------------------- settings


HOSTILE_SETTINGS = [
    ({"seed": 2**70}, "bad_field", "seed"),
    ({"overrides": {"seed": 2**70}}, "bad_config", "seed"),
    ({"overrides": {"negative": "x" * 5000}}, "bad_config", "negative prompt"),
    ({"iterations": 10**12}, "bad_config", "iterations"),
    ({"overrides": {"optim": {"iters": 10**12}}}, "bad_config", "optim.iters"),
    ({"overrides": {"refine": {"iters": 10**9}}}, "bad_config", "refine.iters"),
    ({"overrides": {"render": {"samples": 10**6}}}, "bad_config", "render.samples"),
    ({"overrides": {"nerf": {"hidden_dim": 1 << 16}}}, "bad_config", "nerf.hidden_dim"),
    ({"overrides": {"nerf": {"log2_table_size": 40}}}, "bad_config", "nerf.log2_table_size"),
    ({"overrides": {"optim": {"batch": 4096}}}, "bad_config", "optim.batch"),
    ({"overrides": {"export": {"grid_resolution": 4096}}}, "bad_config", "export.grid_resolution"),
    ({"overrides": {"export": {"texture_size": 1 << 15}}}, "bad_config", "export.texture_size"),
    ({"overrides": {"depth": {"model": "/etc"}}}, "bad_config", "depth.model"),
    ({"overrides": {"depth": {"model": "someone/huge-model", "weight": 1.0}}}, "bad_config", "depth.model"),
    ({"overrides": {"camera": {"front_angle": 10**400}}}, "bad_config", "camera.front_angle"),
    ({"overrides": {"camera": {"front_angle": -30.0}}}, "bad_config", "camera.front_angle"),
    ({"overrides": {"render": {"min_near": -1e308}}}, "bad_config", "render.min_near"),
    ({"overrides": {"mesh": {"t_max": 1.5}}}, "bad_config", "mesh.t_max"),
    ({"overrides": {"mesh": {"fov_range": [30.0, 190.0]}}}, "bad_config", "mesh.fov_range"),
    ({"overrides": {"optim": {"iters": True}}}, "bad_config", "optim.iters"),
    ({"overrides": {"nerf": "big"}}, "bad_config", "nerf"),
]


@pytest.mark.parametrize(("fields", "code", "names"), HOSTILE_SETTINGS)
def test_no_setting_passes_its_ceiling_or_names_a_path(idle, fields: dict, code: str, names: str) -> None:  # noqa: ANN001
    raw = Raw(idle.endpoint)
    header = {"v": 1, "type": "submit", "id": "c1", "task": "generate", "prompt": "a cube", **fields}
    reply = raw.ask(json.dumps(header))
    raw.close()
    assert reply.type == "error" and reply.fields["code"] == code, reply.fields
    assert names in reply.fields["message"], reply.fields
    still_serving(idle, idle.bystander)


def test_paint_uvs_across_udim_tiles_are_refused_at_submit(idle) -> None:  # noqa: ANN001
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    uvs = np.array([[0, 0], [1.5, 0], [0, 1]], np.float32)
    with idle.client() as client:
        refused(lambda: client.submit("paint it", "paint", vertices=vertices, faces=[[0, 1, 2]], uvs=uvs),
                "bad_input", "crosses UDIM tiles (1001, 1002)")
    still_serving(idle, idle.bystander)


# ---------------------------------------------------------------------------------------- models


def test_a_model_that_cannot_be_loaded_is_reported_and_refused(idle) -> None:  # noqa: ANN001
    with idle.client() as client:
        welcome = client.hello()
        missing = "target:/nowhere/missing.glb"
        assert missing in welcome["models"] and "no target mesh file" in welcome["unavailable"][missing]
        assert set(welcome["tasks"]) >= {"generate"}  # the other model still serves
        refused(lambda: client.submit("a cube", model=missing), "model_not_found", "missing.glb")
    still_serving(idle, idle.bystander)


def test_a_service_without_a_usable_model_says_so(start_service, tmp_path: Path) -> None:
    from conftest import ServiceProcess

    service = ServiceProcess(["serve", "--bind", "tcp://127.0.0.1:*", "--jobs", str(tmp_path / "jobs"), "--model",
                              "sd:/nowhere/sd-model", "--workers", "1", "--device", "cpu"], tmp_path / "log")
    try:
        service.endpoint = service.wait_for_log(r"listening on (\S+)")
        with service.client() as client:
            welcome = client.hello()
            assert welcome["tasks"] == []
            assert "no model file or folder" in welcome["unavailable"]["sd:/nowhere/sd-model"]
            error = refused(lambda: client.submit("a cube"), "model_not_found", "sd-model")
            assert "--model" in error.hint
    finally:
        service.close()


# ---------------------------------------------------------------------------------------- restart


def test_restart_fails_each_broken_job_with_its_reason_and_brings_back_the_rest(start_service,
                                                                               tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    mesh = {"vertices": np.eye(3, dtype=np.float32), "faces": np.array([[0, 1, 2]], np.int32)}
    good = store.create({"task": "generate", "prompt": "keep me"}, {}, "loopback")
    broken: dict[str, str] = {}

    def damaged(why: str, spec: dict | None = None, arrays: dict | None = None):  # noqa: ANN202
        record = store.create(spec or {"task": "generate", "prompt": why}, arrays or {}, "loopback")
        broken[record.id] = why
        return store.folder(record.id)

    for content in ("[]", "null", '"text"', "{}", '{"id": 1}', "{"):
        (damaged(f"state {content}") / STATE).write_text(content)
    folder = damaged("created is no number")
    state = json.loads((folder / STATE).read_text())
    (folder / STATE).write_text(json.dumps({**state, "created": "yesterday"}))
    folder = damaged("unknown field")
    (folder / STATE).write_text(json.dumps({**json.loads((folder / STATE).read_text()), "root": True}))
    folder = damaged("state is made up")
    (folder / STATE).write_text(json.dumps({**json.loads((folder / STATE).read_text()), "state": "paused"}))
    (damaged("no state file") / STATE).unlink()
    (damaged("no spec file") / "spec.json").unlink()
    (damaged("spec is a list") / "spec.json").write_text("[1]")
    folder = damaged("truncated inputs", {"task": "paint", "prompt": "p"}, mesh)
    (folder / "inputs" / "faces.npy").write_bytes(b"\x93NUMPY")
    folder = damaged("missing inputs", {"task": "paint", "prompt": "p"}, mesh)
    (folder / "inputs" / "vertices.npy").unlink()
    (damaged("truncated checkpoint") / "checkpoint.npz").write_bytes(b"PK\x03\x04 not a zip")
    folder = damaged("a prompt that is not Unicode (written by hand or an older version)")
    (folder / STATE).write_text((folder / STATE).read_text().replace('"prompt": "a prompt', f'"prompt": "{SURROGATE}'))
    folder = damaged("finished without a result")
    (folder / STATE).write_text(json.dumps({**json.loads((folder / STATE).read_text()), "state": "finished"}))

    service = start_service(workers=0, jobs=tmp_path / "jobs")
    with service.client() as client:
        jobs = {j["job"]: j for j in client.list(limit=1000)}  # the reply encodes: no invalid text in it
        poisoned = next(job for job, why in broken.items() if "Unicode" in why)
        assert client.status(poisoned)["state"] == "failed" and client.cancel(poisoned)["state"] == "failed"
    assert set(jobs) == {good.id, *broken}
    assert jobs[good.id]["state"] == "queued"
    for job, why in broken.items():
        assert jobs[job]["state"] == "failed", why
        assert jobs[job]["error"]["message"].startswith("the job's files are unreadable ("), why
    still_serving(service, good.id)
    service.close()


# ---------------------------------------------------------------------------------------- the last resort


def test_a_failing_handler_answers_internal_and_the_service_keeps_serving(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from backend.examples import example_target
    from backend.service.board import JobBoard
    from backend.service.requests import Requests
    from backend.service.server import Service, ServiceConfig

    service = Service(ServiceConfig(jobs_dir=tmp_path / "jobs", models=[f"target:{example_target()}"],
                                    bind="tcp://127.0.0.1:*", workers=0))
    service.start()
    stop = threading.Event()
    thread = threading.Thread(target=service.serve, args=(stop,), daemon=True)
    thread.start()
    try:
        with Client(service.endpoint, timeout_s=5) as client:
            job = client.submit("a cube")

            def broken(*_: object) -> None:
                raise RuntimeError("an injected bug")

            monkeypatch.setattr(Requests, "on_list", broken)
            refused(client.list, "internal", "an injected bug")
            # a reply that cannot be encoded (text no UTF-8 holds) is answered too
            monkeypatch.setattr(JobBoard, "summary", lambda self, record: {"job": "\ud800"})
            refused(lambda: client.status(job), "internal")
            # and when even building the error fails, the last guard still answers
            monkeypatch.setattr(Service, "_answer", broken)
            refused(client.hello, "internal", "could not answer")
            monkeypatch.undo()
            assert client.hello()["protocol"] == 1 and client.status(job)["state"] == "queued"
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(10)
        service.close()


# ---------------------------------------------------------------------------------------- retention


def _finished(store: JobStore, prompt: str, age_days: float, size: int) -> str:
    record = store.create({"task": "generate", "prompt": prompt}, {}, "loopback")
    mesh = {"vertices": np.eye(3, dtype=np.float32), "faces": np.array([[0, 1, 2]], np.int32)}
    store.save_result(record.id, mesh, b"png", b"g" * size)
    record.state = "finished"
    store.save(record)
    record.updated = time.time() - age_days * 86400
    (store.folder(record.id) / STATE).write_text(json.dumps(record.to_json()))
    return record.id


def test_retention_removes_old_results_keeps_the_budget_and_drops_ended_inputs(start_service,
                                                                             tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    ancient = _finished(store, "ancient", 40, 10)
    older = _finished(store, "older", 3, 1 << 20)
    newer = _finished(store, "newer", 2, 1 << 20)
    waiting = store.create({"task": "generate", "prompt": "waiting"}, {}, "loopback").id
    # about 1.5 MiB: the two recent results do not both fit
    service = start_service("--keep-days", "30", "--disk-budget-gb", str(1.5 / 1024), workers=0, jobs=tmp_path / "jobs")
    with service.client() as client:
        assert {j["job"] for j in client.list()} == {newer, waiting}
        assert client.fetch(newer).job == newer
        limits = client.hello()["limits"]
        assert limits["keep_days"] == 30 and limits["disk_budget_gb"] == pytest.approx(1.5 / 1024)
        for gone in (ancient, older):
            assert not store.folder(gone).exists()
            refused(lambda gone=gone: client.status(gone), "unknown_job")
        mesh = {"vertices": np.eye(3, dtype=np.float32), "faces": [[0, 1, 2]]}
        job = client.submit("paint and cancel", "paint", **mesh)
        assert (store.folder(job) / "inputs" / "vertices.npy").is_file()
        assert client.cancel(job)["state"] == "cancelled"
        assert not (store.folder(job) / "inputs").exists() and (store.folder(job) / STATE).is_file()
    still_serving(service, waiting)
    service.close()
    text = (Path(__file__).resolve().parent.parent / "PROTOCOL.md").read_text()
    assert f"default {DEFAULT_MAX_AGE_DAYS:g} days" in text and f"default {DEFAULT_MAX_DISK_GB:g} GiB" in text
