"""Liveness that does not depend on the job's thread: a job that holds its interpreter (the GIL) for three
liveness windows in one C call finishes on its first worker, while a job process that hangs past the bound or
dies is still ended, and its job resumes from its checkpoint on a new worker. One service for the module."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from test_service_faults import assert_valid, checkpointed, first_step_after, long_job

from backend.service.job_process import HOLD_GIL_HOOK
from backend.service.protocol import LIVENESS

pytestmark = pytest.mark.timeout(240)

HEARTBEAT_S = 0.2  # the service counts a worker gone after LIVENESS of these: one second
HOLD_S = 3 * LIVENESS * HEARTBEAT_S
HANG_S = 5.0  # above the hold, with room for a loaded machine


@pytest.fixture(scope="module")
def trigger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test hook's file: a job that finds it holds its interpreter for the seconds it holds."""
    return tmp_path_factory.mktemp("hook") / "hold-gil"


@pytest.fixture(scope="module")
def service(start_service, trigger: Path):  # noqa: ANN001, ANN201
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(HOLD_GIL_HOOK, str(trigger))
        return start_service("--heartbeat-s", str(HEARTBEAT_S), "--hang-s", str(HANG_S))


def test_a_job_holding_the_gil_for_three_liveness_windows_finishes_on_its_first_worker(
        service, service_tiny, trigger: Path) -> None:  # noqa: ANN001
    with service.client() as client:
        trigger.write_text(f"{HOLD_S:g}")
        submitted = time.monotonic()
        job = client.submit("a toadstool", overrides=long_job(service_tiny, 40))
        result = client.wait(job, timeout_s=180)
        took = time.monotonic() - submitted
        info = client.status(job)
    assert_valid(result)
    # the job really stood still that long in one step, and nobody took its worker for a dead one
    assert not trigger.exists() and f"holding the interpreter for {HOLD_S:g} s" in service.log()
    assert took >= HOLD_S
    assert (info["attempts"], info["crashes"]) == (1, 0), service.log()
    assert "stopped answering" not in service.log() and "exited" not in service.log()


@pytest.mark.parametrize("sig", [signal.SIGSTOP, signal.SIGKILL], ids=["hung", "killed"])
def test_a_job_process_that_hangs_past_the_bound_or_dies_is_ended_and_its_job_resumes(
        service, service_tiny, sig) -> None:  # noqa: ANN001
    with service.client() as client:
        job = client.submit("a toadstool", overrides=long_job(service_tiny))
        saved = checkpointed(client, job, service.log())
        worker = client.status(job)["worker"]
        child = int(service.wait_for_log(rf"worker {re.escape(worker)} on \S+: .*\(job process (\d+)\)"))
        os.kill(child, sig)
        progress: list = []
        result = client.wait(job, timeout_s=180, on_progress=progress.append)
        info = client.status(job)
    assert_valid(result)
    assert (info["attempts"], info["crashes"]) == (2, 1), service.log()
    resumed = [p for p in progress if p.fields["worker"] == result.stats["worker"]]
    assert first_step_after(resumed, 0) > saved["step"], "the job restarted instead of resuming"
    why = rf"has sent nothing for \d+ s while running job {job}: it hung" if sig == signal.SIGSTOP \
        else r"exited \(code -9\)"
    assert re.search(rf"worker {re.escape(worker)}: its job process {why}; ending it", service.log())


def test_the_default_quality_runs_every_stage_to_a_result_under_a_tight_liveness_window(
        service, service_tiny) -> None:  # noqa: ANN001
    """The panel's default Quality (standard: latent, RGB refinement, mesh refinement, export) at tiny sizes."""
    tiny = {**service_tiny, "optim": {"iters": 8}, "refine": {"iters": 3, "resolution": 16},
            "mesh": {"iters": 3, "resolution": 16, "grid_resolution": 12}}
    with service.client() as client:
        job = client.submit("a toadstool", preset="standard", overrides=tiny)
        progress: list = []
        result = client.wait(job, timeout_s=180, on_progress=progress.append)
        info = client.status(job)
    assert_valid(result)
    stages = list(dict.fromkeys(p.fields["stage"] for p in progress))
    trained = [s for s in stages if not s.startswith("export")]
    assert trained == ["latent", "rgb_refine", "mesh"] and stages[len(trained):] and \
        all(s.startswith("export") for s in stages[len(trained):]), stages
    assert (info["attempts"], info["crashes"], info["state"]) == (1, 0, "finished")
    assert result.normal_png is not None  # the refined mesh's normal map: the mesh stage's result was exported
