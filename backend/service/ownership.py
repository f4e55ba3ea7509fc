"""Who a client is, and which jobs it may see: a job belongs to whoever submitted it.

With CURVE keys a client is its public key (ZeroMQ's User-Id of each message, set by the authenticator);
on loopback without keys every client is the one local user, who owns every job.
"""

from __future__ import annotations

import contextlib

import zmq

LOOPBACK_USER = "loopback"


def caller(frame: zmq.Frame | None, keys_on: bool, allowed: frozenset[str]) -> str | None:
    """The owner a message speaks for, or None when it speaks for no allowed key (revoked: drop it)."""
    if not keys_on:
        return LOOPBACK_USER
    user = None
    if frame is not None:
        with contextlib.suppress(zmq.ZMQError):
            user = frame.get("User-Id")
    return user if user and user in allowed else None


def owns(owner: str, record_owner: str, keys_on: bool) -> bool:
    """Whether `owner` may see, fetch and cancel a job that `record_owner` submitted."""
    return not keys_on or owner == record_owner
