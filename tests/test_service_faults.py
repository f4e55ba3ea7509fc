"""Faults the service survives: a client that goes away, a service that is SIGKILLed, a worker that dies."""

from __future__ import annotations

import hashlib
import os
import signal
import time

import numpy as np
import pytest

from backend.mesh import Mesh, validate_mesh

pytestmark = pytest.mark.timeout(240)


def wait_until(check, timeout_s: float = 60.0, what: str = "condition", log: str = ""):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{log}")


def long_job(tiny: dict, iters: int = 150) -> dict:
    return {**tiny, "optim": {"iters": iters}, "loop": {"checkpoint_every": 10, "preview_every_s": 60.0}}


def checkpointed(client, job: str, log: str = "") -> dict:  # noqa: ANN001
    """Wait (polling quickly) until the service holds a checkpoint of `job` past its first steps."""
    return wait_until(lambda: (c := client.status(job)["checkpoint"]) and c["step"] >= 10 and c, 120,
                      "a checkpoint", log)


def assert_valid(result) -> None:  # noqa: ANN001
    assert len(validate_mesh(Mesh(result.vertices, result.faces, result.uvs), "result").faces) > 0


def first_step_after(progress: list, since: int) -> int:
    """The first latent step (not the stage-start event) streamed after index `since`."""
    return next(p.fields["step"] for p in progress[since:] if p.fields["stage"] == "latent" and p.fields["step"])


def test_client_disconnects_mid_job_then_fetches(start_service, service_tiny) -> None:  # noqa: ANN001
    service = start_service()
    client = service.client()
    job = client.submit("a toadstool", overrides=long_job(service_tiny, 50))
    wait_until(lambda: (m := client.poll(1.0)) is not None and m.type == "progress", what="progress")
    client.close()  # gone mid-job: its events are dropped, the job goes on
    with service.client() as again:
        wait_until(lambda: again.status(job)["state"] == "finished", 120, "the job to finish", service.log())
        assert_valid(again.fetch(job))
    service.close()


def test_service_sigkilled_mid_job_resumes_it_and_keeps_finished_results(start_service, service_tiny,
                                                                        tmp_path) -> None:  # noqa: ANN001
    jobs = tmp_path / "jobs"
    service = start_service(jobs=jobs)
    with service.client() as client:
        done = client.submit("first", overrides=service_tiny)
        finished = client.wait(done, timeout_s=120)
        glb = (jobs / done / "result" / "asset.glb").read_bytes()
        job = client.submit("second", overrides=long_job(service_tiny))
        saved = checkpointed(client, job, service.log())
    worker_pid = int(service.wait_for_log(r"worker \S+:(\d+) on cpu"))
    service.kill()
    # its worker notices that the service is gone and exits by itself
    wait_until(lambda: not _alive(worker_pid), 20, "the orphaned worker to exit", service.log())

    restarted = start_service(jobs=jobs, bind=service.endpoint)
    assert restarted.endpoint == service.endpoint
    with restarted.client() as client:
        listed = {j["job"]: j for j in client.list()}
        assert listed[done]["state"] == "finished" and listed[job]["state"] in ("queued", "running")
        assert listed[job]["crashes"] == 1
        progress: list = []
        client.status(job, watch=True)
        result = client.wait(job, timeout_s=180, on_progress=progress.append)
        assert_valid(result)
        assert first_step_after(progress, 0) > saved["step"], "the job restarted instead of resuming"
        # the job finished before the crash is intact, byte for byte
        again = client.fetch(done, glb=True)
        assert np.array_equal(again.vertices, finished.vertices) and again.texture_png == finished.texture_png
        assert hashlib.sha256(again.glb).digest() == hashlib.sha256(glb).digest()
    restarted.close()


def test_worker_killed_mid_job_its_job_completes_on_another(start_service, service_tiny) -> None:  # noqa: ANN001
    service = start_service(workers=2)
    wait_until(lambda: service.log().count(" joined (") >= 2, 60, "two workers", service.log())
    with service.client() as client:
        job = client.submit("a toadstool", overrides=long_job(service_tiny))
        saved = checkpointed(client, job, service.log())
        first = client.status(job)["worker"]
        os.kill(int(first.rsplit(":", 1)[1]), signal.SIGKILL)
        progress: list = []
        result = client.wait(job, timeout_s=180, on_progress=progress.append)
        info = client.status(job)
    assert_valid(result)
    assert info["attempts"] == 2 and info["crashes"] == 1
    assert result.stats["worker"] != first  # the other worker (the killed one is restarting meanwhile)
    # events the first worker sent before it died may still arrive after the kill: skip those
    resumed = [p for p in progress if p.fields["worker"] == result.stats["worker"]]
    assert first_step_after(resumed, 0) > saved["step"], "the job restarted instead of resuming"
    assert f"worker {first} exited" in service.log()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of the killed service counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
