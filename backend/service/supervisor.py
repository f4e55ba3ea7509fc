"""Local worker processes: one per device, started by the service and restarted if one dies.

Each is `python -m backend.service.worker --parent <service pid>`: a separate interpreter (no fork of a process
that holds CUDA or sockets) that exits by itself when the service that started it is gone, and runs its jobs in
a job process of its own that it watches (it exits when that process dies or hangs, and is restarted here).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

from backend.service.worker import package_env

QUICK_EXIT_S = 30.0  # a worker that dies sooner than this after starting probably cannot start at all
MAX_QUICK_EXITS = 3


@dataclass
class Slot:
    device: str
    process: subprocess.Popen | None = None
    started: float = 0.0
    quick_exits: int = 0


class LocalWorkers:
    def __init__(self, endpoint: str, models: list[str], devices: list[str], heartbeat_s: float,
                 hang_s: float) -> None:
        self.endpoint, self.models, self.heartbeat_s, self.hang_s = endpoint, models, heartbeat_s, hang_s
        self.slots = [Slot(d) for d in devices]

    def _command(self, device: str) -> list[str]:
        cmd = [sys.executable, "-m", "backend.service.worker", "--connect", self.endpoint, "--device", device,
               "--heartbeat-s", str(self.heartbeat_s), "--hang-s", str(self.hang_s), "--parent", str(os.getpid())]
        for model in self.models:
            cmd += ["--model", model]
        return cmd

    def _spawn(self, slot: Slot) -> None:
        # the same backend package as the service
        slot.process = subprocess.Popen(self._command(slot.device), env=package_env(), stdin=subprocess.DEVNULL)
        slot.started = time.monotonic()

    def start(self) -> None:
        for slot in self.slots:
            self._spawn(slot)

    def reap(self) -> list[int]:
        """Pids of workers that exited since the last call; each is restarted unless it keeps dying at once."""
        gone = []
        for slot in self.slots:
            if slot.process is None or slot.process.poll() is None:
                continue
            gone.append(slot.process.pid)
            code = slot.process.returncode
            slot.quick_exits = slot.quick_exits + 1 if time.monotonic() - slot.started < QUICK_EXIT_S else 0
            if slot.quick_exits >= MAX_QUICK_EXITS:
                print(f"service: the worker on {slot.device} exited {slot.quick_exits} times right after "
                      f"starting (last exit code {code}); not restarting it — see its messages above",
                      file=sys.stderr)
                slot.process = None
            else:
                print(f"service: the worker on {slot.device} exited (code {code}); restarting it", file=sys.stderr)
                self._spawn(slot)
        return gone

    def given_up(self) -> bool:
        """True once every worker kept dying right after starting and none is restarted any more."""
        return all(slot.process is None for slot in self.slots)

    def alive(self) -> int:
        return sum(1 for s in self.slots if s.process is not None and s.process.poll() is None)

    def stop(self, timeout_s: float = 10.0) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.terminate()
        deadline = time.monotonic() + timeout_s
        for slot in self.slots:
            if slot.process is None:
                continue
            try:
                slot.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                slot.process.kill()
                slot.process.wait()
