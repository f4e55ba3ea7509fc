"""The service's answers to client requests (hello, submit, status, list, cancel, fetch, reexport, finish,
heartbeat), each a method `on_<type>(identity, owner, message) → frames` once the message is decoded and its
sender known. `status`, `list` and `cancel` also take a group of variants by its id."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from backend import __version__
from backend.catalog import MAX_FACES, MAX_PROMPT_CHARS, MAX_SEED, MAX_VERTICES, METHODS, PRESETS, TASKS, choices
from backend.errors import LatentForgeError
from backend.service import models, schema, tasks, variants
from backend.service.board import JobBoard
from backend.service.config import ServiceConfig
from backend.service.jobs import FINAL_STATES
from backend.service.protocol import REQUEST_LIMITS, VERSION, Frames, Message, encode

MAX_LISTENERS = 256  # clients that get status pushes: the most recently heard that asked in their hello


class Refused(LatentForgeError):
    """A valid request the service declines; `code` is one of the protocol's error codes."""

    def __init__(self, code: str, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.code = code


def reply(kind: str, request: Message, fields: dict[str, Any], arrays: dict | None = None,
          blobs: dict | None = None) -> Frames:
    """A reply carrying the request's id, so the client can match it."""
    if request.id is not None:
        fields = {"id": request.id, **fields}
    return encode(kind, fields, arrays, blobs)


class Requests:
    def __init__(self, config: ServiceConfig, board: JobBoard, unavailable: dict[str, str],
                 keys_on: Callable[[], bool]) -> None:
        self.config = config
        self.board = board
        self.store = board.store
        self.unavailable = unavailable  # model → why this machine cannot load it
        self.keys_on = keys_on
        # clients whose hello asked for status pushes, most recently heard last; a ROUTER drops sends to
        # ones that have gone
        self.listeners: OrderedDict[bytes, None] = OrderedDict()
        # fixed for the service's life; computing them imports every task's code, at start rather than in a reply
        self.ceilings = schema.ceilings(*tasks.config_types())

    def heard(self, identity: bytes) -> None:
        if identity in self.listeners:
            self.listeners.move_to_end(identity)

    def status(self) -> dict[str, Any]:
        """What a client's server panel shows; heartbeats carry it."""
        pool = self.board.pool
        return {"queue": len(pool.queue), "workers": len(pool.workers), "models": self.config.models}

    def limits(self) -> dict[str, Any]:
        return {"max_prompt_chars": MAX_PROMPT_CHARS, "max_faces": MAX_FACES, "max_vertices": MAX_VERTICES,
                "max_message_bytes": REQUEST_LIMITS.max_message_bytes, "max_seed": MAX_SEED,
                "max_queued_per_client": self.config.max_queued_per_client, "max_variants": self.config.max_variants,
                "ceilings": self.ceilings,
                "keep_days": self.config.retention.max_age_days, "disk_budget_gb": self.config.retention.max_disk_gb}

    def on_hello(self, identity: bytes, owner: str, message: Message) -> Frames:
        if message.fields.get("watch"):
            self.listeners[identity] = None
            self.listeners.move_to_end(identity)
            while len(self.listeners) > MAX_LISTENERS:
                self.listeners.popitem(last=False)
        usable = len(self.unavailable) < len(self.config.models)
        return reply("welcome", message, {
            "server": "latentforge", "version": __version__, "protocol": VERSION,
            "tasks": list(TASKS) if usable else [],
            "methods": list(METHODS), "presets": list(PRESETS), "models": self.config.models,
            "choices": {"methods": choices(METHODS), "presets": choices(PRESETS)},
            "unavailable": {m: f"{why}; {models.HINT}" for m, why in self.unavailable.items()},
            **{k: v for k, v in self.status().items() if k != "models"}, "limits": self.limits()})

    def on_submit(self, identity: bytes, owner: str, message: Message) -> Frames:
        model = message.fields.get("model") or self.config.models[0]
        if model not in self.config.models:
            raise Refused("unknown_model", f"this service does not serve the model {model[:200]!r}",
                          f"use one of: {', '.join(self.config.models)}")
        if model in self.unavailable:
            raise Refused("model_not_found", f"this service cannot load the model {model}: "
                          f"{self.unavailable[model]}", models.HINT)
        count = message.fields.get("variants")
        self._check_room(owner, count)
        spec = tasks.JobSpec.from_submit({**message.fields, "model": model}, message.arrays, message.blobs)
        tasks.check_spec(spec)
        if count is None:
            if message.fields.get("draft_iterations") is not None:
                raise Refused("bad_config", "draft_iterations is the length of each variant's draft",
                              "send it with variants, or leave it out")
            records = [self.store.create(spec.fields, spec.arrays, owner, spec.blobs)]
        else:
            specs, draft = variants.variant_specs(spec, count, message.fields.get("draft_iterations"))
            group = uuid.uuid4().hex
            records = [self.store.create(fields, spec.arrays, owner, spec.blobs, group, draft) for fields in specs]
        for record in records:
            self.board.add(record)
            if message.fields.get("watch", True):
                self.board.watch(record.id, identity)
        fields: dict[str, Any] = {"job": records[0].id, "position": self.board.pool.position(records[0].id)}
        if count is not None:
            fields.update(job=records[0].group, variants=[{"job": r.id, "seed": r.seed} for r in records])
        return reply("accepted", message, fields)

    def _check_room(self, owner: str, count: int | None) -> None:
        """Refuse a submit of `count` variants (None: one job) over the service's ceiling or the client's queue."""
        most, limit = self.config.max_variants, self.config.max_queued_per_client
        if count is not None and count > most:
            raise Refused("bad_config", f"variants is {count}, over this service's limit of {most}",
                          f"ask for {most} or fewer")
        queued = self.board.queued_by(owner)
        if count is None and queued >= limit:
            raise Refused("queue_full", f"you already have {queued} queued jobs, the most this service allows",
                          "wait for one to start, or cancel one")
        if count is not None and queued + count > limit:
            room = max(0, limit - queued)
            raise Refused("queue_full", f"{count} variants would make {queued + count} queued jobs of yours, over "
                          f"this service's limit of {limit} (room for {room} more)",
                          f"ask for {room} or fewer variants, or wait for queued jobs to start" if room else
                          "wait for queued jobs to start, or cancel some")

    def on_status(self, identity: bytes, owner: str, message: Message) -> Frames:
        group = self.board.group(message.fields["job"], owner, self.keys_on())
        if group is not None:
            for member in group:
                if message.fields.get("watch") and member.state not in FINAL_STATES:
                    self.board.watch(member.id, identity)
            return reply("job", message, {"job": self.board.group_summary(message.fields["job"])})
        record = self.board.record(message.fields["job"], owner, self.keys_on())
        if message.fields.get("watch") and record.state not in FINAL_STATES:
            self.board.watch(record.id, identity)
        return reply("job", message, {"job": self.board.summary(record)})

    def on_list(self, identity: bytes, owner: str, message: Message) -> Frames:
        state = message.fields.get("state")
        entries = [e for e in self.board.entries(owner, self.keys_on()) if state is None or e["state"] == state]
        return reply("jobs", message, {"jobs": entries[-message.fields.get("limit", 100):]})

    def on_cancel(self, identity: bytes, owner: str, message: Message) -> Frames:
        group = self.board.group(message.fields["job"], owner, self.keys_on())
        if group is not None:  # every variant that has not ended; finished drafts stay
            for member in group:
                self.board.cancel(member)
            return reply("job", message, {"job": self.board.group_summary(message.fields["job"])})
        record = self.board.record(message.fields["job"], owner, self.keys_on())
        self.board.cancel(record)
        return reply("job", message, {"job": self.board.summary(record)})

    def on_fetch(self, identity: bytes, owner: str, message: Message) -> Frames:
        if (group := self.board.group(message.fields["job"], owner, self.keys_on())) is not None:
            raise Refused("not_finished", f"{message.fields['job']} is a group of {len(group)} variants, which has no "
                          "result of its own", "fetch one of its variants (its status lists them)")
        record = self.board.record(message.fields["job"], owner, self.keys_on())
        if record.state in ("failed", "cancelled"):
            error = record.error or {}
            raise Refused(error.get("code", "job_failed"), error.get("message", f"the job {record.state}"),
                          error.get("hint"))
        if record.state != "finished":
            raise Refused("not_finished", f"job {record.id} is {record.state}, it has no result yet",
                          "wait for its result message, or poll its status")
        try:
            arrays, texture, glb_path = self.store.load_result(record.id)
            blobs = {"texture": texture}
            if (normal_map := self.store.load_normal_map(record.id)) is not None:
                blobs["normal_map"] = normal_map
            blobs.update(self.store.load_tiles(record.id))
            if message.fields.get("glb"):
                blobs["glb"] = glb_path.read_bytes()
        except Exception as exc:  # a damaged or deleted result folder: that job's problem, not the service's
            raise Refused("job_failed", f"the result files of job {record.id} cannot be read ({exc})"[:500],
                          "submit the job again") from None
        return reply("result", message, {"job": record.id, "glb_path": str(glb_path),
                                          "stats": record.stats or {}}, arrays, blobs)

    def on_heartbeat(self, identity: bytes, owner: str, message: Message) -> Frames:
        return reply("heartbeat", message, {"time": time.time(), **self.status()})

    def on_reexport(self, identity: bytes, owner: str, message: Message) -> Frames:
        """Export a failed job's trained field again with other export settings, without training again:
        the job is queued once more with its spec's export settings changed, and resumes from the checkpoint
        saved at the end of its optimisation."""
        record = self.board.record(message.fields["job"], owner, self.keys_on())
        if record.state != "failed":
            raise Refused("not_reexportable", f"job {record.id} is {record.state}: only a job whose export failed "
                          "can be exported again", "wait for it to end, or submit a new job")
        if not self.store.has_checkpoint(record.id):
            raise Refused("not_reexportable", f"job {record.id} kept no checkpoint of its trained field",
                          "submit the job again")
        spec = tasks.reexport_spec(self.store.spec(record.id), message.fields["export"], record.checkpoint)
        self.store.save_spec(record.id, spec)
        record.state, record.error, record.progress, record.cancel_requested = "queued", None, None, False
        self.store.save(record)
        self.board.pool.enqueue(record.id)
        if message.fields.get("watch", True):
            self.board.watch(record.id, identity)
        return reply("job", message, {"job": self.board.summary(record)})

    def on_finish(self, identity: bytes, owner: str, message: Message) -> Frames:
        """Finish a variant's draft with its job's whole schedule, from the draft's checkpoint; the group's other
        variants that have not ended are cancelled unless `cancel_others` is false."""
        job = message.fields["job"]
        if self.board.group(job, owner, self.keys_on()) is not None:
            raise Refused("not_finishable", f"{job} is a group of variants: finish one of them",
                          "its status lists each variant's id and seed")
        record = self.board.record(job, owner, self.keys_on())
        if record.draft is None or record.finish_requested:
            raise Refused("not_finishable", f"job {record.id} is not a variant's draft"
                          + (" any more: it is being finished" if record.group else ""),
                          "finish a draft of a submit with variants" if not record.group else None)
        if record.state in ("failed", "cancelled"):
            raise Refused("not_finishable", f"the draft of job {record.id} {record.state}: it kept nothing to "
                          "finish from", "finish another variant, or submit again")
        self.board.finish(record, variants.finish_spec(self.store.spec(record.id)))
        if message.fields.get("cancel_others", True):
            for other in self.board.members(record.group):
                if other is not record:
                    self.board.cancel(other)
        if message.fields.get("watch", True):
            self.board.watch(record.id, identity)
        return reply("job", message, {"job": self.board.summary(record)})
