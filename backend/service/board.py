"""The service's jobs between their submit and their end: records, groups of variants, who watches each, and what
the worker pool reports (progress, checkpoints, results, errors, lost workers). It is the pool's `JobHost`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from backend.errors import LatentForgeError
from backend.service import checkpoint_wire, ownership, tasks, variants
from backend.service.broker import WorkerPool
from backend.service.jobs import FINAL_STATES, JobRecord, JobStore, UnknownJob
from backend.service.protocol import Frames, Message, encode, error_fields

Send = Callable[[bytes, Frames], None]  # (client identity, frames): dropped if that client has gone


class JobBoard:
    def __init__(self, store: JobStore, send: Send, max_crashes: int, on_end: Callable[[], None]) -> None:
        self.store = store
        self.send = send
        self.max_crashes = max_crashes
        self.on_end = on_end  # after a job ends: the retention policy runs
        self.records: dict[str, JobRecord] = {}
        self.groups: dict[str, list[str]] = {}  # group id → its variants' job ids, in seed order
        self.subscribers: dict[str, set[bytes]] = {}
        self.pool: WorkerPool | None = None  # set once the service has made its pool (which reports here)

    # -------------------------------------------------------------------------------------------- lookups

    def record(self, job: str, owner: str, keys_on: bool) -> JobRecord:
        record = self.records.get(job)
        # another client's job is as unknown as one that never existed
        if record is None or not ownership.owns(owner, record.owner, keys_on):
            raise UnknownJob(f"no job {job!r} of yours on this service")
        return record

    def group(self, group: str, owner: str, keys_on: bool) -> list[JobRecord] | None:
        """The variants of group `group`, or None when no group has that id (it may be a job's)."""
        members = self.members(group)
        if not members:
            return None
        if not ownership.owns(owner, members[0].owner, keys_on):
            raise UnknownJob(f"no job {group!r} of yours on this service")
        return members

    def members(self, group: str) -> list[JobRecord]:
        """The variants of a group that are still kept (the retention policy removes ended ones)."""
        members = [self.records[j] for j in self.groups.get(group, ()) if j in self.records]
        if not members:
            self.groups.pop(group, None)
        return members

    def summary(self, record: JobRecord) -> dict[str, Any]:
        return {**record.summary(), "position": self.pool.position(record.id)}

    def group_summary(self, group: str) -> dict[str, Any]:
        """A group as one entry: its id as `job`, what its variants share, and each variant's own summary."""
        members = self.members(group)
        first = members[0]
        return {"job": group, "task": first.task, "state": variants.group_state([m.state for m in members]),
                "created": min(m.created for m in members), "updated": max(m.updated for m in members),
                "prompt": first.prompt, "model": first.model, "variants": [self.summary(m) for m in members]}

    def entries(self, owner: str, keys_on: bool) -> list[dict[str, Any]]:
        """The caller's jobs as `list` shows them, oldest first: a group once, where its first variant is."""
        out, seen = [], set()
        for record in self.records.values():
            if not ownership.owns(owner, record.owner, keys_on) or record.group in seen:
                continue
            if record.group:
                seen.add(record.group)
                out.append(self.group_summary(record.group))
            else:
                out.append(self.summary(record))
        return out

    def queued_by(self, owner: str) -> int:
        return sum(1 for r in self.records.values() if r.owner == owner and r.state == "queued")

    def watch(self, job: str, identity: bytes) -> None:
        self.subscribers.setdefault(job, set()).add(identity)

    def forget_watchers(self, gone: set[bytes]) -> None:
        for watchers in self.subscribers.values():
            watchers -= gone

    # -------------------------------------------------------------------------------------------- lifecycle

    def recover(self) -> None:
        """Requeue what a previous run left queued or running; everything else is served as it is."""
        for record in self.store.load_all():
            self.records[record.id] = record
            if record.group:
                self.groups.setdefault(record.group, []).append(record.id)
            if record.state in FINAL_STATES:
                continue
            if record.state == "running":
                record.crashes += 1  # the service died while the job ran
            self.requeue_or_end(record, "the service stopped while it ran", front=False)

    def add(self, record: JobRecord) -> None:
        self.records[record.id] = record
        if record.group:
            self.groups.setdefault(record.group, []).append(record.id)
        self.pool.enqueue(record.id)

    def notify(self, job: str, frames: Frames, last: bool = False) -> None:
        for identity in list(self.subscribers.get(job, ())):
            self.send(identity, frames)
        if last:
            self.subscribers.pop(job, None)

    def end(self, record: JobRecord, state: str, code: str | None = None, message: str = "",
            hint: str | None = None, details: dict | None = None) -> None:
        record.state = state
        if code is not None:
            record.error = {"code": code, "message": message, "hint": hint, **({"details": details} if details else {})}
            self.notify(record.id, encode("error", error_fields(code, message, hint, job=record.id,
                                                                details=details)), last=True)
        self.store.save(record)
        # it never runs again, so what it was given goes now; except a trained field whose export can be redone
        # with other settings (its inputs and checkpoint then age out with the job)
        if state in ("failed", "cancelled") and not (details or {}).get("reexport"):
            self.store.drop_inputs(record.id)
        self.on_end()

    def requeue_or_end(self, record: JobRecord, why: str, front: bool = True) -> None:
        if record.cancel_requested:
            self.end(record, "cancelled", "cancelled", "the job was cancelled")
        elif record.crashes > self.max_crashes:
            self.end(record, "failed", "worker_lost", f"the job stopped its worker {record.crashes} times "
                     f"(last: {why})", "try a lower quality preset or a smaller input")
        else:
            record.state = "queued"
            self.store.save(record)
            # a job that was running was submitted before everything still queued
            self.pool.enqueue(record.id, front=front)

    def cancel(self, record: JobRecord) -> None:
        if record.state == "queued":
            self.pool.dequeue(record.id)
            self.end(record, "cancelled", "cancelled", "the job was cancelled before it started")
        elif record.state == "running":
            record.cancel_requested = True
            self.store.save(record)
            self.pool.cancel(record.id)

    def finish(self, record: JobRecord, spec: dict[str, Any]) -> None:
        """Finish a variant's draft: it runs its job's whole schedule from where the draft is (a finished draft
        is queued again; a running one goes on into the finish when its draft ends)."""
        self.store.save_spec(record.id, spec)
        saved = self.store.load_checkpoint(record.id)
        if saved is not None:
            skeleton = variants.continued(saved[0], record.draft)
            self.store.save_checkpoint(record.id, skeleton, saved[1])
            record.checkpoint = checkpoint_wire.position(skeleton)
        if record.state == "running":
            record.finish_requested = True  # its draft steps stay known: this run's checkpoints are placed with them
        else:
            record.draft = None
        if record.state == "finished":
            record.state, record.stats, record.progress = "queued", None, None
            self.pool.enqueue(record.id)
        self.store.save(record)

    def _continue_draft(self, record: JobRecord) -> None:
        """A draft that was picked while it ran has ended: its job goes on from the draft's last checkpoint."""
        record.draft, record.finish_requested, record.state = None, False, "queued"
        self.store.save(record)
        self.pool.enqueue(record.id, front=True)  # it was running: it goes on before anything still queued

    def dispatch(self) -> None:
        """Hand queued jobs to idle workers that serve their model, fairly between clients."""
        for job, worker in self.pool.match(lambda j: self.records[j].model, lambda j: self.records[j].owner):
            record = self.records[job]
            if record.finish_requested:  # picked while its draft ran, which then stopped: this run is the finish
                record.draft, record.finish_requested = None, False
            try:
                frames = self.task_frames(record)
            except Exception as exc:  # missing, truncated or tampered files: fail this job, serve the rest
                self.pool.release(worker)
                self.end(record, "failed", "job_failed", f"the job's files cannot be read ({exc})",
                         "submit the job again")
                continue
            record.state, record.worker, record.progress = "running", worker.name, None
            record.attempts += 1
            self.store.save(record)
            self.pool.send(worker, frames)

    def task_frames(self, record: JobRecord) -> Frames:
        saved = self.store.load_checkpoint(record.id)
        skeleton, checkpoint = saved if saved is not None else (None, {})
        return encode("task", {"job": record.id, "spec": self.store.spec(record.id), "checkpoint": skeleton,
                               "attempt": record.attempts},
                      {**self.store.inputs(record.id), **checkpoint}, self.store.input_blobs(record.id))

    def reexport_offer(self, record: JobRecord, details: dict | None) -> dict | None:
        """An error's details, with `reexport`: whether a reexport could reuse the job's trained field."""
        if details is None:
            return None
        try:
            tasks.reexport_spec(self.store.spec(record.id), {}, record.checkpoint)
            possible = self.store.has_checkpoint(record.id)
        except (LatentForgeError, OSError, ValueError):
            possible = False
        return {**details, "reexport": possible}

    # -------------------------------------------------------------------------------------------- the pool's reports

    def job_message(self, job: str, message: Message, worker: Any) -> None:
        record = self.records[job]
        fields = message.fields
        if message.type == "progress":
            record.progress = {k: fields.get(k) for k in ("stage", "step", "total", "eta_s", "losses")}
            self.notify(job, encode("progress", fields, blobs=message.blobs))
        elif message.type == "checkpoint":
            skeleton = fields["state"]
            if record.finish_requested:  # a draft run whose job is being finished: placed in the whole schedule
                skeleton = variants.continued(skeleton, record.draft)
            self.store.save_checkpoint(job, skeleton, message.arrays)
            record.checkpoint = checkpoint_wire.position(skeleton)
            self.store.save(record)
        elif message.type == "result" and not {"texture", "glb"} <= set(message.blobs):
            self.end(record, "failed", "internal", f"worker {worker.name} sent a result without its files")
        elif message.type == "result" and record.finish_requested:
            self._continue_draft(record)
        elif message.type == "result":
            # a UDIM paint's images, the levels of detail's normal maps and textures
            tiles = {k: v for k, v in message.blobs.items() if k.startswith(("tile.", "lod."))}
            # a draft keeps its checkpoint, to be finished from
            glb_path = self.store.save_result(job, message.arrays, message.blobs["texture"], message.blobs["glb"],
                                              message.blobs.get("normal_map"), tiles, record.draft is not None)
            record.stats = fields.get("stats") or {}
            if record.draft is not None:  # says what the result is: a draft, to judge and maybe finish
                record.stats = {**record.stats, "draft": record.draft, "seed": record.seed}
            self.end(record, "finished")
            images = {k: message.blobs[k] for k in ("texture", "normal_map") if k in message.blobs} | tiles
            self.notify(job, encode("result", {"job": job, "glb_path": str(glb_path), "stats": record.stats},
                                    message.arrays, images), last=True)
        elif fields["code"] == "busy":
            self.pool.enqueue(job, front=True)
            record.state = "queued"
            self.store.save(record)
        else:
            state = "cancelled" if fields["code"] == "cancelled" else "failed"
            self.end(record, state, fields["code"], fields["message"], fields.get("hint"),
                     self.reexport_offer(record, fields.get("details")))

    def job_lost(self, job: str, worker: Any, why: str) -> None:
        record = self.records[job]
        record.crashes += 1
        self.requeue_or_end(record, why)
