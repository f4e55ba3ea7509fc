"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tiny_sd import TinySingleFile


# Tiny random Stable Diffusion models (see tiny_sd.py), built once per session. tiny_sd is imported
# inside the fixtures so that test modules that never use them do not pay for importing diffusers.


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A diffusers folder of a tiny random SD that predicts ε (seed 0)."""
    from tiny_sd import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "epsilon", prediction_type="epsilon")


@pytest.fixture(scope="session")
def tiny_sd_vpred_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same architecture and weights, with a scheduler that says the U-Net predicts v."""
    from tiny_sd import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "v_prediction", prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny_sd_single_file(tmp_path_factory: pytest.TempPathFactory, tiny_sd_dir: Path) -> TinySingleFile:
    """`TinySingleFile(checkpoint, config, seed)`: an LDM-layout .safetensors plus its config folder."""
    from tiny_sd import save_tiny_single_file

    path = tmp_path_factory.mktemp("tiny-sd") / "tiny-sd-ldm.safetensors"
    return save_tiny_single_file(path, config=tiny_sd_dir)


# The job service (tests/test_service_*.py): real processes on loopback, each in its own process group so
# that whatever it spawned is killed with it when a test ends.

SERVICE_TINY = {
    "resolution": 8,
    "optim": {"iters": 30},
    "refine": {"iters": 0},
    "mesh": {"iters": 0},
    "nerf": {"levels": 2, "log2_table_size": 10, "max_resolution": 32, "hidden_dim": 16},
    "render": {"samples": 8},
    "export": {"grid_resolution": 32, "texture_size": 64, "max_faces": 2000, "density_threshold": 5.0},
    "loop": {"checkpoint_every": 10, "preview_every_s": 0.5},
}


class ServiceProcess:
    """`python -m backend serve ...` with its output in a log file."""

    def __init__(self, args: list[str], log: Path) -> None:
        import os
        import subprocess
        import sys

        self.args, self.log_path = args, log
        self._log = open(log, "w")  # noqa: SIM115 - stays open for the process's lifetime
        # one torch thread per process: on a small shared CPU, more threads only fight each other
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.process = subprocess.Popen([sys.executable, "-u", "-m", "backend", *args], stdout=self._log, env=env,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.endpoint = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout_s: float = 60.0) -> str:
        """The first match of regex `pattern` in the log; fails with the log if it does not appear."""
        import re
        import time

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log())
            if match:
                return match.group(1) if match.groups() else match.group(0)
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} did not appear (exit code {self.process.poll()}); log:\n{self.log()}")

    def client(self, timeout_s: float = 10.0, **kw: object):  # noqa: ANN201 - backend.service.client.Client
        from backend.service.client import Client

        return Client(self.endpoint, timeout_s=timeout_s, **kw)

    def kill(self) -> None:
        """SIGKILL this process only (not what it spawned)."""
        import os
        import signal

        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def close(self) -> None:
        """Kill this process and everything it spawned, then close the log."""
        import contextlib
        import os
        import signal

        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.process.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def start_service(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a factory
    """`start_service(*serve_args, jobs=None, workers=1)` → a running service (endpoint read from its log).
    All are killed when the module ends."""
    from backend.examples import example_target

    started: list[ServiceProcess] = []
    model = f"target:{example_target()}"

    def start(*args: str, jobs: Path | None = None, workers: int = 1, bind: str = "tcp://127.0.0.1:*",
              ready: bool = True, timeout_s: float = 60.0) -> ServiceProcess:
        folder = tmp_path_factory.mktemp("service")
        argv = ["serve", "--bind", bind, "--jobs", str(jobs or folder / "jobs"), "--model", model,
                "--workers", str(workers), "--device", "cpu", "--heartbeat-s", "0.5", *args]
        service = ServiceProcess(argv, folder / "service.log")
        started.append(service)
        if ready:
            service.endpoint = service.wait_for_log(r"listening on (\S+)", timeout_s)
        return service

    start.model = model
    yield start
    for process in started:
        process.close()


@pytest.fixture
def service_tiny() -> dict:
    """Overrides that make a generate job take a second or two on a CPU (a fresh copy per test)."""
    import copy

    return copy.deepcopy(SERVICE_TINY)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # files with slow optimisations first, so that with several workers none of them starts last and runs alone
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
