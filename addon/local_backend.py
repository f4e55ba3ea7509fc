"""A local LatentForge server that the add-on starts and stops (a child process, no bpy here)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import IO


def serve_command(python: str, address: str, extra_args: str = "") -> list[str]:
    """`<python> -m backend serve --bind ADDRESS ...`: the backend's own Python, not Blender's."""
    return [python, "-m", "backend", "serve", "--bind", address, *shlex.split(extra_args)]


class LocalBackend:
    """One server process; its output goes to a log file the panel can point to."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self._log: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_message(self) -> str | None:
        """Why a started server is no longer running, or None if it runs or was never started."""
        if self.process is None or self.process.poll() is None:
            return None
        where = f" (see {self.log_path})" if self.log_path else ""
        return f"the local server exited with code {self.process.returncode}{where}"

    def start(self, command: list[str], log_path: Path) -> None:
        if self.running:
            return
        self.stop()
        python = Path(command[0])
        if not python.is_file():
            raise FileNotFoundError(f"no Python at \"{python}\": set the backend's Python in the add-on preferences")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = log_path.open("ab")
        # A new process group (POSIX) or console-less process (Windows) so that Blender's Ctrl+C
        # in a terminal does not also hit the server.
        flags = subprocess.CREATE_NO_WINDOW if sys.platform == "win32" else 0
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log,
                                        stderr=subprocess.STDOUT, creationflags=flags,
                                        start_new_session=sys.platform != "win32")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the server to stop (SIGTERM lets it checkpoint jobs), kill it if it does not."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
