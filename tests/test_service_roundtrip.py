"""The service end to end on loopback: generate and paint jobs on the tiny pipeline, queue rules, the CLI."""

from __future__ import annotations

import time

import numpy as np
import pytest
import trimesh

from backend.cli import main
from backend.mesh import Mesh, validate_mesh
from backend.service.client import ServiceError

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def service(start_service):  # noqa: ANN001, ANN201
    return start_service("--max-queued", "3")


def box(center: tuple[float, float, float] = (3.0, 0.0, 1.0)) -> Mesh:
    b = trimesh.creation.box((1.0, 0.6, 0.8)).subdivide()
    return Mesh(np.asarray(b.vertices, np.float32) + np.asarray(center, np.float32), np.asarray(b.faces, np.int32))


def assert_valid_result(result) -> None:  # noqa: ANN001
    mesh = validate_mesh(Mesh(result.vertices, result.faces, result.uvs), "result")
    assert len(mesh.faces) > 0 and result.uvs is not None
    assert result.texture_png.startswith(b"\x89PNG")


def wait_for_state(client, job: str, state: str, timeout_s: float = 60.0) -> dict:  # noqa: ANN001
    import time

    deadline = time.monotonic() + timeout_s
    while (info := client.status(job))["state"] != state:
        assert time.monotonic() < deadline, f"job {job} stayed {info['state']}, never {state}"
        time.sleep(0.05)
    return info


def test_hello_describes_the_service(service) -> None:  # noqa: ANN001
    with service.client() as client:
        info = client.hello()
    assert info["protocol"] == 1 and info["models"] == [service.args[service.args.index("--model") + 1]]
    assert {"generate", "paint"} <= set(info["tasks"]) and "sds" in info["methods"]
    assert info["limits"]["max_queued_per_client"] == 3


def test_generate_round_trip_streams_progress_and_a_valid_mesh(service, service_tiny) -> None:  # noqa: ANN001
    progress = []
    with service.client() as client:
        job = client.submit("a red toadstool", overrides=service_tiny, seed=3)
        result = client.wait(job, timeout_s=120, on_progress=progress.append)
        assert_valid_result(result)
        assert {p.fields["stage"] for p in progress} >= {"latent", "export: surface density", "export: write"}
        assert all(p.fields["eta_s"] > 0 for p in progress if p.fields["step"] > 0)  # the ETA covers export
        latent = [p.fields for p in progress if p.fields["stage"] == "latent"]
        assert latent[-1]["step"] == latent[-1]["total"] == 30 and "total" in latent[-1]["losses"]
        assert any(p.blobs.get("preview", b"").startswith(b"\x89PNG") for p in progress)
        # fetching again gives the same arrays, and the GLB when asked
        again = client.fetch(job, glb=True)
        assert np.array_equal(again.vertices, result.vertices) and again.glb[:4] == b"glTF"
        assert client.status(job)["state"] == "finished" and client.status(job)["checkpoint"] is not None
        assert job in {j["job"] for j in client.list(state="finished")}


def test_generate_with_a_sketch_lands_in_the_sketch_frame(service, service_tiny) -> None:  # noqa: ANN001
    sketch = box()
    overrides = {**service_tiny, "sketch": {"grid_resolution": 16}}
    with service.client() as client:
        job = client.submit("a box", overrides=overrides, vertices=sketch.vertices, faces=sketch.faces)
        result = client.wait(job, timeout_s=120)
    assert_valid_result(result)
    center = (result.vertices.min(0) + result.vertices.max(0)) / 2
    assert np.linalg.norm(center - np.array([3.0, 0.0, 1.0])) < 1.0  # placed by the sketch, not at the origin


def test_paint_round_trip_keeps_the_geometry(service) -> None:  # noqa: ANN001
    mesh = box()
    overrides = {"resolution": 16, "texture_size": 64, "iters": 6, "loop": {"checkpoint_every": 3}}
    with service.client() as client:
        job = client.submit("a wooden crate", "paint", overrides=overrides, vertices=mesh.vertices, faces=mesh.faces)
        result = client.wait(job, timeout_s=120)
    assert_valid_result(result)
    assert result.vertex_map is not None and np.allclose(result.vertices, mesh.vertices[result.vertex_map])


@pytest.mark.parametrize(("arrays", "code"), [
    ({}, "bad_array"),  # paint needs a mesh
    ({"vertices": np.full((3, 3), np.nan, np.float32), "faces": np.array([[0, 1, 2]])}, "bad_array"),
    ({"vertices": np.eye(3, dtype=np.float32), "faces": np.array([[0, 1, 3]])}, "bad_array"),
    ({"vertices": np.eye(3, dtype=np.float32), "faces": np.array([[0, 1, 2]]), "uvs": np.zeros((2, 2), np.float32)},
     "bad_array"),
    ({"vertices": np.zeros((3, 3), np.float32), "faces": np.array([[0, 1, 2]])}, "bad_input"),  # degenerate
])
def test_paint_specs_are_validated_in_full_before_a_job_exists(service, arrays, code) -> None:  # noqa: ANN001
    from backend.service import protocol

    with service.client() as client:
        before = len(client.list())
        frames = protocol.encode("submit", {"id": "x1", "task": "paint", "prompt": "a crate"}, arrays)
        client.socket.send_multipart(frames)  # raw, past the client's own checks
        reply = protocol.decode(client.socket.recv_multipart(), protocol.TRUSTED_LIMITS)
        assert reply.type == "error" and reply.fields["code"] == code and reply.id == "x1", reply.fields
        assert len(client.list()) == before


def test_bad_settings_are_refused_with_an_actionable_error(service, service_tiny) -> None:  # noqa: ANN001
    with service.client() as client:
        cases = [
            ({"overrides": {"optim": {"itters": 5}}}, "bad_config", "itters"),
            ({"preset": "ultra"}, "bad_config", "ultra"),
            ({"model": "sd:/etc/passwd"}, "unknown_model", "does not serve"),
            ({"method": "nope"}, "bad_config", "nope"),
        ]
        for fields, code, words in cases:
            with pytest.raises(ServiceError) as err:
                client.submit("x", overrides=fields.pop("overrides", service_tiny), **fields)
            assert err.value.code == code and words in err.value.message, err.value
        with pytest.raises(ServiceError) as err:
            client.submit("", overrides=service_tiny)
        assert err.value.code == "bad_config" and err.value.hint
        with pytest.raises(ServiceError) as err:
            client.status("0" * 32)
        assert err.value.code == "unknown_job"


def test_queue_limit_cancel_and_order(service, service_tiny) -> None:  # noqa: ANN001
    slow = {**service_tiny, "optim": {"iters": 2000}}
    with service.client() as client:
        running = client.submit("a", overrides=slow)
        wait_for_state(client, running, "running")
        queued = [client.submit("b", overrides=service_tiny) for _ in range(3)]  # the per-client limit
        with pytest.raises(ServiceError) as err:
            client.submit("c", overrides=service_tiny)
        assert err.value.code == "queue_full"
        assert [client.status(j)["position"] for j in queued] == [0, 1, 2]  # submission order
        for job in queued:
            assert client.cancel(job)["state"] == "cancelled"
        assert client.cancel(running)["cancel_requested"]
        with pytest.raises(ServiceError) as err:
            client.wait(running, timeout_s=60)
        assert err.value.code == "cancelled"
        with pytest.raises(ServiceError) as err:
            client.fetch(running)
        assert err.value.code == "cancelled"


def test_cli_submit_status_fetch(service, service_tiny, tmp_path, capsys) -> None:  # noqa: ANN001
    import json

    (tmp_path / "tiny.json").write_text(json.dumps(service_tiny))
    out = tmp_path / "out" / "asset.glb"
    assert main(["submit", "--server", service.endpoint, "--prompt", "a toadstool", "--overrides",
                 str(tmp_path / "tiny.json"), "--wait", "--out", str(out)]) == 0
    job = capsys.readouterr().out.splitlines()[0]
    assert out.read_bytes()[:4] == b"glTF" and out.with_suffix(".png").is_file()
    assert main(["status", "--server", service.endpoint, job]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "finished"
    again = tmp_path / "again.glb"
    assert main(["fetch", "--server", service.endpoint, job, "--out", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()
    assert main(["fetch", "--server", service.endpoint, "f" * 32, "--out", str(again)]) == 2
    assert "unknown_job" in capsys.readouterr().err


def next_status_push(client, until) -> dict:  # noqa: ANN001
    """The first heartbeat the service pushes (no request id) whose fields satisfy `until`."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        message = client.poll(1.0)
        if message is not None and message.type == "heartbeat" and message.id is None and until(message.fields):
            return message.fields
    raise AssertionError("no such status push within 120 s")


def test_a_failed_export_is_reexported_without_training_again(service, service_tiny, tmp_path, capsys) -> None:  # noqa: ANN001
    empty = {**service_tiny, "export": {**service_tiny["export"], "density_threshold": 1e6}}
    with service.client() as client:
        welcome = client.hello(watch=True)  # this client now hears every change of the status
        if welcome["workers"] == 0:  # the worker is still loading: its joining is pushed
            assert next_status_push(client, lambda f: f["workers"] == 1)["models"] == welcome["models"]
        job = client.submit("a red toadstool", overrides=empty, seed=3)
        behind = client.submit("a toadstool", overrides=service_tiny, watch=False)  # waits: the queue grows
        assert next_status_push(client, lambda f: f["queue"] >= 1)["workers"] == 1
        client.cancel(behind)
        with pytest.raises(ServiceError) as info:
            client.wait(job, timeout_s=120)
        assert info.value.code == "no_surface" and "peak density" in info.value.message
        details = client.status(job)["error"]["details"]
        assert details["reexport"] and details["threshold"] == 1e6
        assert details["lowest_density"] < details["suggested_threshold"] < details["peak_density"] < 1e6
        with pytest.raises(ServiceError, match="only a job whose export failed"):
            client.reexport(behind, {"density_threshold": 1.0})  # cancelled: nothing was trained
        with pytest.raises(ServiceError, match="unknown setting"):
            client.reexport(job, {"threshold": 1.0})
    capsys.readouterr()
    out = tmp_path / "reexported.glb"
    assert main(["reexport", "--server", service.endpoint, job, "--density-threshold",
                 str(details["suggested_threshold"]), "--wait", "--out", str(out)]) == 0
    stages = {line.split()[0] for line in capsys.readouterr().err.splitlines() if line.strip()}
    # straight to the export (its sub-steps are stages "export: NAME"): not one optimisation step again
    assert stages and all(stage.startswith("export") for stage in stages), stages
    assert out.read_bytes()[:4] == b"glTF"


def test_game_ready_levels_and_quads_travel_and_are_kept(service, service_tiny) -> None:  # noqa: ANN001
    overrides = {**service_tiny, "export": {**service_tiny.get("export", {}), "max_faces": 400, "quad": True,
                                            "lods": 2}}
    with service.client() as client:
        job = client.submit("a red toadstool", overrides=overrides, seed=3)
        result = client.wait(job, timeout_s=120)
        again = client.fetch(job)
    assert_valid_result(result)
    arrays, blobs = result.level_arrays, result.level_blobs
    assert result.stats["lods"][0] <= 400 and result.stats["lods"][0] > result.stats["lods"][1]
    assert len(arrays["polygon_sizes"]) == result.stats["lods"][0] and result.stats["quads"][0] > 0.5
    assert len(arrays["lod.1.polygon_sizes"]) == result.stats["lods"][1]
    assert {"lod.1.normal_map", "lod.1.texture"} == set(blobs) and result.normal_png.startswith(b"\x89PNG")
    assert set(again.level_arrays) == set(arrays) and again.level_blobs == blobs  # kept with the job
