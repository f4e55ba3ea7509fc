"""How long the service keeps finished work: an age and a disk budget, both settings.

Jobs that ended (finished, failed, cancelled) are deleted once older than `max_age_days`, and oldest
first while the job folder is over `max_disk_gb`; queued and running jobs are never deleted. A failed or
cancelled job never runs again, so its inputs and checkpoint go as soon as it ends (see JobStore.drop_inputs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backend.service.protocol import FINAL_STATES

if TYPE_CHECKING:  # the job store pulls in the export code (torch): the CLI reads the defaults without it
    from backend.service.jobs import JobRecord, JobStore

DEFAULT_MAX_AGE_DAYS = 30.0
DEFAULT_MAX_DISK_GB = 50.0


@dataclass(frozen=True)
class RetentionPolicy:
    max_age_days: float = DEFAULT_MAX_AGE_DAYS
    max_disk_gb: float = DEFAULT_MAX_DISK_GB


class Retention:
    def __init__(self, store: JobStore, policy: RetentionPolicy) -> None:
        self.store, self.policy = store, policy
        self._sizes: dict[str, int] = {}  # of ended jobs, whose files no longer change

    def _size(self, record: JobRecord) -> int:
        if record.state not in FINAL_STATES:
            return self.store.size(record.id)
        if record.id not in self._sizes:
            self._sizes[record.id] = self.store.size(record.id)
        return self._sizes[record.id]

    def sweep(self, records: dict[str, JobRecord], now: float | None = None) -> list[str]:
        """Delete what the policy no longer keeps (folders and records); returns the ids deleted."""
        now = time.time() if now is None else now
        ended = sorted((r for r in records.values() if r.state in FINAL_STATES), key=lambda r: r.updated)
        cutoff = now - self.policy.max_age_days * 86400
        doomed = {r.id: r for r in ended if r.updated < cutoff}
        total = sum(self._size(r) for r in records.values() if r.id not in doomed)
        budget = self.policy.max_disk_gb * (1 << 30)
        for record in ended:
            if total <= budget:
                break
            if record.id not in doomed:
                doomed[record.id] = record
                total -= self._size(record)
        for job in doomed:
            self.store.remove(job)
            records.pop(job, None)
            self._sizes.pop(job, None)
        return list(doomed)
