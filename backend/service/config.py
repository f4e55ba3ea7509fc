"""How a service runs: its address, models, workers, keys, limits and retention (the `serve` command's flags)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from backend.service.retention import RetentionPolicy
from backend.service.worker import HANG_S


@dataclass
class ServiceConfig:
    jobs_dir: Path
    models: list[str]
    bind: str = "tcp://127.0.0.1:5555"
    workers: int = 1  # local worker processes, one per entry of `devices`
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    ray: str | None = None  # run jobs on this Ray cluster ("auto", "local" or an address), not local workers
    ray_cpus: float = 1.0  # CPUs each Ray actor takes on a cluster without GPUs
    keys_dir: Path | None = None
    max_queued_per_client: int = 8
    max_variants: int = 8  # variants one submit may ask for
    heartbeat_s: float = 1.0
    hang_s: float = HANG_S  # a job process silent this long while it runs a job is hung
    max_crashes: int = 3  # a job that kills its worker this often is failed, not retried forever
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
