"""The LatentForge service client, shared by the command line and the Blender add-on.

A DEALER socket that sends requests with an id and matches replies by it; job events (progress,
result, error) that arrive meanwhile are queued for `poll`/`events`/`wait`. A request that times out
resets the socket (the "lazy pirate" pattern), so a late reply never answers the wrong request.
Imports only the standard library, numpy and pyzmq.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq
import zmq.auth

from . import protocol
from .protocol import SERVER_REPLIES, TRUSTED_LIMITS, Message, ProtocolError

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"


class ServiceError(Exception):
    """An error reply (or a local check that would have produced one): `code`, `message`, `hint`."""

    def __init__(self, code: str, message: str, hint: str | None = None, job: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.hint, self.job = code, message, hint, job
        self.details = details or {}  # what was measured, e.g. a no_surface's densities

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ServiceTimeout(ServiceError):
    def __init__(self, message: str) -> None:
        super().__init__("timeout", message, "is the service running, and are the address and keys right?")


@dataclass(frozen=True)
class CurveKeys:
    """The server's public key and this client's key pair (z85)."""

    server_public: bytes
    public: bytes
    secret: bytes

    @staticmethod
    def load(server_key: str | Path, client_key: str | Path) -> CurveKeys:
        """From the server's `server.key` and a client's `NAME.key_secret` (as `latentforge keys` writes)."""
        server_public, _ = zmq.auth.load_certificate(str(server_key))
        public, secret = zmq.auth.load_certificate(str(client_key))
        if not secret:
            raise ServiceError("bad_field", f"{client_key} holds no secret key", "give the .key_secret file")
        return CurveKeys(server_public, public, secret)

    def apply(self, socket: zmq.Socket) -> None:
        socket.curve_serverkey = self.server_public
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret


@dataclass
class JobResult:
    job: str
    vertices: np.ndarray  # [V, 3] float32, z up
    faces: np.ndarray  # [F, 3] int
    uvs: np.ndarray | None  # [V, 2] float32
    vertex_map: np.ndarray | None  # paint: [V] index of the input vertex each output vertex copies
    texture_png: bytes
    glb_path: str | None  # where the service keeps the GLB (on its machine)
    glb: bytes | None  # the GLB itself, when fetched with glb=True
    stats: dict[str, Any]
    normal_png: bytes | None = None  # a refined mesh's tangent-space normal map
    tiles: dict[int, bytes] = field(default_factory=dict)  # a UDIM paint: each tile's texture (PNG)
    # a game-ready export: LOD0's polygon_sizes / polygon_corners and each later level's lod.<k>.* arrays,
    # and those levels' lod.<k>.normal_map / lod.<k>.texture blobs (PROTOCOL.md)
    level_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    level_blobs: dict[str, bytes] = field(default_factory=dict)

    @staticmethod
    def from_message(message: Message) -> JobResult:
        a, b, f = message.arrays, message.blobs, message.fields
        tiles = {int(name[len("tile."):]): png for name, png in b.items() if name.startswith("tile.")}
        levels = {name: array for name, array in a.items() if name.startswith(("polygon_", "lod."))}
        return JobResult(f["job"], a["vertices"], a["faces"], a.get("uvs"), a.get("vertex_map"), b["texture"],
                         f.get("glb_path"), b.get("glb"), f.get("stats", {}), b.get("normal_map"), tiles, levels,
                         {name: png for name, png in b.items() if name.startswith("lod.")})


@dataclass
class Variants:
    """A submit's group of variants: its id (for `status`, `list` and `cancel`) and each variant's job and seed."""

    group: str
    jobs: list[tuple[str, int]]


def _error(message: Message) -> ServiceError:
    f = message.fields
    return ServiceError(f["code"], f["message"], f.get("hint"), f.get("job"), f.get("details"))


class Client:
    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, timeout_s: float = 10.0, keys: CurveKeys | None = None,
                 context: zmq.Context | None = None) -> None:
        self.endpoint, self.timeout_s, self.keys = endpoint, timeout_s, keys
        self.context = context or zmq.Context.instance()
        self._events: deque[Message] = deque()
        self.socket: zmq.Socket | None = None
        self._open()

    def _open(self) -> None:
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.linger = 0
        if self.keys is not None:
            self.keys.apply(self.socket)
        self.socket.connect(self.endpoint)

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------- transport

    def _receive(self, timeout_s: float) -> Message | None:
        """One decoded message within `timeout_s`, or None (malformed ones are dropped)."""
        if not self.socket.poll(max(0, int(timeout_s * 1000))):
            return None
        frames = self.socket.recv_multipart()
        try:
            return protocol.decode(frames, TRUSTED_LIMITS, SERVER_REPLIES)
        except ProtocolError:
            return None

    def request(self, kind: str, fields: dict[str, Any] | None = None,
                arrays: dict[str, np.ndarray] | None = None, timeout_s: float | None = None,
                blobs: dict[str, bytes] | None = None) -> Message:
        """Send a request and return its reply; raises ServiceError for an error reply, ServiceTimeout."""
        request_id = uuid.uuid4().hex[:16]
        wait_s = self.timeout_s if timeout_s is None else timeout_s
        # a DEALER whose only peer refused its handshake (e.g. a revoked key) has nowhere to queue a message and
        # would block in send: bounded by the same timeout as the reply
        self.socket.sndtimeo = max(1, int(wait_s * 1000))
        try:
            self.socket.send_multipart(protocol.encode(kind, {"id": request_id, **(fields or {})}, arrays, blobs),
                                       copy=False)
        except zmq.Again:
            self.close()
            self._open()
            raise ServiceTimeout(f"could not send {kind} to {self.endpoint} within {wait_s:g} s (is this computer's "
                                 "key allowed there?)") from None
        deadline = time.monotonic() + wait_s
        while (remaining := deadline - time.monotonic()) > 0:
            message = self._receive(remaining)
            if message is None:
                continue
            if message.id == request_id:
                if message.type == "error":
                    raise _error(message)
                return message
            if message.id is None:
                self._events.append(message)
            # else: the late reply to a request that timed out: dropped
        self.close()  # a fresh socket, so the late reply cannot be mistaken for the next one
        self._open()
        raise ServiceTimeout(f"no reply from {self.endpoint} to {kind} within {wait_s:g} s")

    # ---------------------------------------------------------------------------------- requests

    def hello(self, watch: bool = False) -> dict[str, Any]:
        """The service's welcome. With `watch`, the service pushes a heartbeat (a `poll` event) with its
        workers, queue and models whenever one of them changes."""
        return self.request("hello", {"client": "latentforge-client", "watch": watch}).fields

    def heartbeat(self, timeout_s: float | None = None) -> dict[str, Any]:
        """The service's status; `timeout_s` (default the client's) bounds the wait for its answer."""
        return self.request("heartbeat", {"time": time.time()}, timeout_s=timeout_s).fields

    def submit(self, prompt: str = "", task: str = "generate", *, negative: str | None = None,
               method: str | None = None, seed: int | None = None, iterations: int | None = None,
               preset: str | None = None, model: str | None = None, overrides: dict | None = None,
               vertices: np.ndarray | None = None, faces: np.ndarray | None = None, uvs: np.ndarray | None = None,
               selected_faces: np.ndarray | None = None, appearance: dict[str, np.ndarray] | None = None,
               image: bytes | None = None, image_view: tuple[float, float] | None = None,
               watch: bool = True, variants: int | None = None, draft_iterations: int | None = None) -> str:
        """Submit a job; returns its id. A generate's optional sketch or a paint's mesh goes in
        vertices [V, 3] / faces [F, 3] (and uvs [V, 2] for paint; `selected_faces` [N]: paint only those
        triangles; `appearance`: how its faces look now, the arrays PROTOCOL.md lists). `image`: a reference
        image's PNG bytes, seen from `image_view` (azimuth, elevation in degrees, the asset's frame; default
        its front). With `watch`, its events stream here. With `variants`, the id is the group's (see
        `submit_variants`)."""
        return self._submit(locals()).fields["job"]

    def submit_variants(self, count: int, prompt: str = "", task: str = "generate", *,
                        draft_iterations: int | None = None, **kwargs: Any) -> Variants:
        """Submit `count` variants of a job (seeds `seed`, `seed` + 1, …, each run as a draft of
        `draft_iterations` first-stage steps, by default the draft preset's) and return the group; the other
        arguments are `submit`'s. `finish` one of them to run its whole schedule from its draft."""
        fields = self._submit({**kwargs, "prompt": prompt, "task": task, "variants": count,
                               "draft_iterations": draft_iterations}).fields
        return Variants(fields["job"], [(v["job"], v["seed"]) for v in fields["variants"]])

    def _submit(self, given: dict[str, Any]) -> Message:
        task = given.get("task", "generate")
        names = ("task", "prompt", "negative", "method", "seed", "iterations", "preset", "model", "overrides", "watch",
                 "variants", "draft_iterations")
        fields = {k: given[k] for k in names if given.get(k) is not None}
        fields.setdefault("watch", True)
        if given.get("image_view") is not None:
            fields["image_azimuth"], fields["image_elevation"] = (float(v) for v in given["image_view"])
        image = given.get("image")
        blobs = {protocol.IMAGE_BLOB: bytes(image)} if image is not None else {}
        vertices, faces, uvs = given.get("vertices"), given.get("faces"), given.get("uvs")
        selected_faces, appearance = given.get("selected_faces"), given.get("appearance")
        arrays: dict[str, np.ndarray] = {}
        if vertices is not None:
            arrays["vertices"] = np.asarray(vertices, dtype=np.float32)
        if faces is not None:
            faces = np.asarray(faces)
            arrays["faces"] = faces if faces.dtype in (np.int32, np.int64) else faces.astype(np.int64)
        if uvs is not None:
            arrays["uvs"] = np.asarray(uvs, dtype=np.float32)
        if selected_faces is not None:
            arrays["selected_faces"] = np.asarray(selected_faces, dtype=np.int64).reshape(-1)
        arrays.update(appearance or {})
        try:  # the service checks all of this again; checking here gives the same error without a round trip
            protocol.check_fields("submit", fields)
            protocol.check_arrays("submit", arrays)
            protocol.check_mesh_arrays(task, arrays)
            protocol.check_image_blob(fields, blobs)
        except ProtocolError as exc:
            raise ServiceError(exc.code, exc.message) from None
        return self.request("submit", fields, arrays, blobs=blobs)

    def status(self, job: str, watch: bool = False) -> dict[str, Any]:
        """The job's summary (state, progress, error...); with `watch`, its events stream here from now on."""
        return self.request("status", {"job": job, "watch": watch}).fields["job"]

    def list(self, limit: int = 100, state: str | None = None) -> list[dict[str, Any]]:
        fields: dict[str, Any] = {"limit": limit}
        if state is not None:
            fields["state"] = state
        return self.request("list", fields).fields["jobs"]

    def cancel(self, job: str) -> dict[str, Any]:
        return self.request("cancel", {"job": job}).fields["job"]

    def reexport(self, job: str, export: dict[str, Any], watch: bool = True) -> dict[str, Any]:
        """Export a failed job's trained field again with these export settings (e.g.
        `{"density_threshold": 2.5}`), without training again; returns its summary (queued once more).
        With `watch`, its events stream here."""
        return self.request("reexport", {"job": job, "export": export, "watch": watch}).fields["job"]

    def finish(self, job: str, cancel_others: bool = True, watch: bool = True) -> dict[str, Any]:
        """Finish a variant's draft: its job's whole schedule, continued from the draft; returns its summary
        (queued again, or running on into the finish). The group's other variants that have not ended are
        cancelled unless `cancel_others` is false. With `watch`, its events stream here."""
        fields = {"job": job, "cancel_others": cancel_others, "watch": watch}
        return self.request("finish", fields).fields["job"]

    def fetch(self, job: str, glb: bool = False) -> JobResult:
        """A finished job's result, again; `glb` also brings the GLB file's bytes."""
        return JobResult.from_message(self.request("fetch", {"job": job, "glb": glb}))

    # ---------------------------------------------------------------------------------- events

    def poll(self, timeout_s: float = 0.0) -> Message | None:
        """The next job event (progress, result, error), waiting at most `timeout_s`; None if none came."""
        deadline = time.monotonic() + timeout_s
        while not self._events:
            message = self._receive(max(0.0, deadline - time.monotonic()))
            if message is not None and message.id is None:
                self._events.append(message)
            elif time.monotonic() >= deadline:
                return None
        return self._events.popleft()

    def events(self, timeout_s: float) -> Iterator[Message]:
        """Job events as they come, until none has come for `timeout_s`."""
        while (message := self.poll(timeout_s)) is not None:
            yield message

    def wait(self, job: str, timeout_s: float | None = None,
             on_progress: Callable[[Message], None] | None = None, check_every_s: float = 2.0) -> JobResult:
        """Follow a job to its result (raises its error). When no event comes for `check_every_s` (this client
        reconnected, or the service restarted) it asks for the status and re-subscribes, so nothing is missed."""
        outcome = self.wait_all([job], timeout_s, on_progress, check_every_s)[job]
        if isinstance(outcome, ServiceError):
            raise outcome
        return outcome

    def wait_all(self, jobs: list[str], timeout_s: float | None = None,
                 on_progress: Callable[[Message], None] | None = None,
                 check_every_s: float = 2.0) -> dict[str, JobResult | ServiceError]:
        """Follow several jobs (e.g. the variants of a group) to their ends at once: each one's result, or the
        error it ended with. Raises ServiceTimeout when they have not all ended within `timeout_s`."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last_seen = dict.fromkeys(jobs, time.monotonic())
        out: dict[str, JobResult | ServiceError] = {}
        while len(out) < len(last_seen) and (deadline is None or time.monotonic() < deadline):
            wait_s = check_every_s if deadline is None else min(check_every_s, deadline - time.monotonic())
            message = self.poll(max(0.0, wait_s))
            job = message.fields.get("job") if message is not None else None
            if job in last_seen and job not in out:
                last_seen[job] = time.monotonic()
                if message.type == "result":
                    out[job] = JobResult.from_message(message)
                elif message.type == "error":
                    out[job] = _error(message)
                elif message.type == "progress" and on_progress is not None:
                    on_progress(message)
            for job, seen in last_seen.items():
                if job not in out and time.monotonic() - seen >= check_every_s:
                    last_seen[job] = time.monotonic()
                    if (ended := self._ended(job)) is not None:
                        out[job] = ended
        if len(out) < len(last_seen):
            left = [j for j in last_seen if j not in out]
            raise ServiceTimeout(f"job {left[0]}{f' and {len(left) - 1} more' if len(left) > 1 else ''} did not "
                                 f"finish within {timeout_s:g} s")
        return out

    def _ended(self, job: str) -> JobResult | ServiceError | None:
        """A quiet job's end, asked for (and its events subscribed to again): None while it goes on."""
        info = self.status(job, watch=True)
        if info["state"] == "finished":
            return self.fetch(job)
        if info["state"] in ("failed", "cancelled"):
            error = info.get("error") or {}
            return ServiceError(error.get("code", "job_failed"), error.get("message", info["state"]), error.get("hint"),
                                job, error.get("details"))
        return None
