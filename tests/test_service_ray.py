"""`latentforge serve --ray`: the same service with its jobs on a real Ray cluster of this machine.

One cluster (2 CPUs) for the module, made here with `ray.init`; the service joins it by address, as it
would join a studio's cluster, with two CPU actors. The tiny pipeline keeps each job to seconds.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_service_faults import assert_valid, checkpointed, first_step_after, long_job, wait_until
from test_service_roundtrip import box

from backend.service.client import ServiceError
from backend.service.job_process import HOLD_GIL_HOOK

pytestmark = pytest.mark.timeout(600)

HANG_S = 5.0
PAINT = {"resolution": 16, "texture_size": 64, "iters": 6, "loop": {"checkpoint_every": 3}}


@pytest.fixture(scope="module")
def hold_gil(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The job processes' test hook file (backend.service.job_process): a job that finds it holds its GIL."""
    return tmp_path_factory.mktemp("hook") / "hold-gil"


@pytest.fixture(scope="module")
def ray_cluster(hold_gil: Path) -> str:
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as patch:  # the cluster's processes, actors included, inherit it
        patch.setenv(HOLD_GIL_HOOK, str(hold_gil))
        context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="latentforge-tests")
    yield context.address_info["gcs_address"]
    ray.shutdown()


def start_on_ray(start_service, address: str, jobs: Path | None = None, bind: str = "tcp://127.0.0.1:*"):  # noqa: ANN001, ANN201
    """A service with two CPU actors on the cluster, once both have loaded the model; a job process silent for
    HANG_S while it runs a job is hung."""
    service = start_service("--ray", address, "--hang-s", str(HANG_S), workers=2, jobs=jobs, bind=bind, timeout_s=300)
    wait_until(lambda: service.log().count("joined on Ray") >= 2, 300, "two Ray actors", service.log())
    return service


@pytest.fixture(scope="module")
def local_service(start_service):  # noqa: ANN001, ANN201
    """The default service (one local worker process), started early so that it starts beside the actors."""
    return start_service(ready=False)


@pytest.fixture(scope="module")
def ray_service(start_service, ray_cluster, local_service, tmp_path_factory):  # noqa: ANN001, ANN201
    jobs = tmp_path_factory.mktemp("ray") / "jobs"
    service = start_on_ray(start_service, ray_cluster, jobs)
    service.jobs = jobs
    return service


def _pid(worker: str) -> int:
    return int(worker.rsplit(":", 1)[1])


def test_generate_and_paint_on_ray_equal_the_local_workers_results(ray_service, local_service,
                                                                  service_tiny) -> None:  # noqa: ANN001
    local = local_service
    local.endpoint = local.wait_for_log(r"listening on (\S+)", 300)
    mesh = box()
    results = {}
    clients = {"ray": ray_service.client(), "local": local.client()}
    jobs = {(where, task): c.submit("a red toadstool", task, seed=3, overrides=overrides, **arrays)
            for where, c in clients.items()
            for task, overrides, arrays in [("generate", service_tiny, {}),
                                            ("paint", PAINT, {"vertices": mesh.vertices, "faces": mesh.faces})]}
    streamed: list = []  # the Ray generate's events, as a client sees them
    for (where, task), job in jobs.items():
        on_progress = streamed.append if (where, task) == ("ray", "generate") else None
        results[where, task] = clients[where].wait(job, timeout_s=300, on_progress=on_progress)
    for c in clients.values():
        c.close()
    for task in ("generate", "paint"):
        on_ray, here = results["ray", task], results["local", task]
        assert_valid(on_ray)
        assert on_ray.stats["worker"] != here.stats["worker"]
        for name in ("vertices", "faces", "uvs", "vertex_map"):
            a, b = getattr(on_ray, name), getattr(here, name)
            assert (a is None) == (b is None) and (a is None or np.array_equal(a, b)), (task, name)
        assert on_ray.texture_png == here.texture_png, task
    latent = [p.fields for p in streamed if p.fields["stage"] == "latent"]
    assert latent[-1]["step"] == latent[-1]["total"] == 30
    assert latent[-1]["worker"] == results["ray", "generate"].stats["worker"]
    assert any(p.blobs.get("preview", b"").startswith(b"\x89PNG") for p in streamed)
    local.close()  # its worker's CPU goes back to the actors


def test_cancel_a_queued_and_a_running_ray_job(ray_service, service_tiny) -> None:  # noqa: ANN001
    slow = {**service_tiny, "optim": {"iters": 5000}}
    with ray_service.client() as client:
        running = [client.submit("a", overrides=slow) for _ in range(2)]  # one per actor
        wait_until(lambda: all(client.status(j)["state"] == "running" for j in running), 120, "both running")
        queued = client.submit("b", overrides=slow)
        assert client.status(queued)["position"] == 0
        assert client.cancel(queued)["state"] == "cancelled"
        wait_until(lambda: all((client.status(j).get("progress") or {}).get("step") for j in running), 120,
                   "both stepping", ray_service.log())
        for job in running:
            assert client.cancel(job)["cancel_requested"]
        for job in running:  # the actor stops the job itself, mid-stage, and says so
            with pytest.raises(ServiceError) as err:
                client.wait(job, timeout_s=120)
            assert err.value.code == "cancelled"
            assert client.status(job)["progress"]["step"] < 5000
        assert client.status(queued)["attempts"] == 0  # it never reached an actor
        # every job so far ran on the module's two actors, each of which loaded the model once
        assert len({client.status(j)["worker"] for j in running}) == 2
        assert ray_service.log().count("joined on Ray") == 2


def test_an_actor_killed_mid_job_its_job_resumes_on_the_other_from_its_checkpoint(ray_service,
                                                                                  service_tiny) -> None:  # noqa: ANN001
    with ray_service.client() as client:
        job = client.submit("a toadstool", overrides=long_job(service_tiny))
        saved = checkpointed(client, job, ray_service.log())
        first = client.status(job)["worker"]
        os.kill(_pid(first), signal.SIGKILL)
        progress: list = []
        result = client.wait(job, timeout_s=300, on_progress=progress.append)
        info = client.status(job)
    assert_valid(result)
    assert info["attempts"] == 2 and info["crashes"] == 1
    assert result.stats["worker"] != first  # the other actor (Ray restarts the killed one meanwhile)
    resumed = [p for p in progress if p.fields["worker"] == result.stats["worker"]]
    assert first_step_after(resumed, 0) > saved["step"], "the job restarted instead of resuming"
    assert f"worker {first} died" in ray_service.log()


def test_a_job_holding_its_gil_finishes_on_its_actor_and_a_hung_job_process_gives_its_job_back(
        ray_service, service_tiny, hold_gil) -> None:  # noqa: ANN001
    with ray_service.client() as client:
        hold_gil.write_text("3")
        held = client.submit("a toadstool", overrides=long_job(service_tiny, 40))
        assert_valid(client.wait(held, timeout_s=300))
        assert not hold_gil.exists() and "holding the interpreter for 3 s" in ray_service.log()
        assert (client.status(held)["attempts"], client.status(held)["crashes"]) == (1, 0)

        job = client.submit("a toadstool", overrides=long_job(service_tiny))
        saved = checkpointed(client, job, ray_service.log())
        first = client.status(job)["worker"]
        # its current job process (said by the service itself: Ray may fold look-alike lines of its actors)
        child = int(re.findall(rf"worker {re.escape(first)} joined on Ray .*job process (\d+)\)",
                               ray_service.log())[-1])
        os.kill(child, signal.SIGSTOP)  # hung: alive, silent
        progress: list = []
        result = client.wait(job, timeout_s=300, on_progress=progress.append)
        info = client.status(job)
    assert_valid(result)
    assert (info["attempts"], info["crashes"]) == (2, 1)
    resumed = [p for p in progress if p.fields["worker"] == result.stats["worker"]]
    assert first_step_after(resumed, 0) > saved["step"], "the job restarted instead of resuming"
    ray_service.wait_for_log(rf"worker {re.escape(first)}: its job process has sent nothing for \d+ s while "
                             rf"running job {job}: it hung; ending it", 30)  # the actor's words, as Ray relays them


def test_variants_on_the_two_actors_one_killed_mid_draft_resumes_elsewhere_and_the_group_completes(
        ray_service, service_tiny) -> None:  # noqa: ANN001
    with ray_service.client() as client:
        group = client.submit_variants(2, "a toadstool", overrides=long_job(service_tiny, 300), draft_iterations=150)
        jobs = [job for job, _ in group.jobs]
        saved = checkpointed(client, jobs[0], ray_service.log())
        first = client.status(jobs[0])["worker"]
        os.kill(_pid(first), signal.SIGKILL)
        progress: list = []
        drafts = client.wait_all(jobs, 300, progress.append)
        infos = [client.status(job) for job in jobs]
        assert client.status(group.group)["state"] == "finished"
    for job in jobs:
        assert_valid(drafts[job])
    assert infos[0]["attempts"] == 2 and infos[0]["crashes"] == 1 and drafts[jobs[0]].stats["worker"] != first
    resumed = [p for p in progress if p.fields["job"] == jobs[0] and p.fields["worker"] != first]
    assert first_step_after(resumed, 0) > saved["step"], "the variant restarted instead of resuming"


def test_service_sigkilled_and_restarted_on_the_same_cluster_lists_and_finishes_every_job(
        ray_service, start_service, ray_cluster, service_tiny) -> None:  # noqa: ANN001
    with ray_service.client() as client:
        before = {j["job"]: j["state"] for j in client.list()}
        jobs = [client.submit(f"job {i}", overrides=long_job(service_tiny)) for i in range(3)]  # 2 run, 1 waits
        saved = checkpointed(client, jobs[0], ray_service.log())
    ray_service.kill()
    restarted = start_on_ray(start_service, ray_cluster, ray_service.jobs, bind=ray_service.endpoint)
    with restarted.client() as client:
        listed = {j["job"]: j for j in client.list()}
        assert {k: listed[k]["state"] for k in before} == before  # finished, failed and cancelled ones as they were
        # the running and waiting jobs are back in the queue; one may have ended before the kill (an actor still
        # busy with the last test's job leaves the other free to finish one alone)
        states = {j: listed[j]["state"] for j in jobs}
        assert states[jobs[0]] in ("queued", "running"), states
        assert all(state in ("queued", "running", "finished") for state in states.values()), states
        assert listed[jobs[0]]["crashes"] == 1
        progress: list = []
        client.status(jobs[0], watch=True)
        assert_valid(client.wait(jobs[0], timeout_s=300, on_progress=progress.append))
        assert first_step_after(progress, 0) > saved["step"], "the job restarted instead of resuming"
        for job in jobs[1:]:
            assert_valid(client.wait(job, timeout_s=300))
    restarted.close()


def test_without_ray_installed_serve_ray_says_how_to_install_it(tmp_path) -> None:  # noqa: ANN001
    shadow = tmp_path / "shadow" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", "backend", "serve", "--ray", "auto", "--jobs", str(tmp_path / "jobs"),
                          "--model", "target:none.glb"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "pip install 'latentforge[ray]'" in run.stderr and "Traceback" not in run.stderr, run.stderr

