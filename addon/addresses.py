"""Server addresses: parsed and checked before the socket sees them (ZeroMQ's own errors are cryptic)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
SCHEMES = ("tcp", "ipc")
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@dataclass(frozen=True)
class Address:
    scheme: str
    host: str  # "" for ipc
    port: int  # 0 for ipc
    path: str = ""  # ipc only

    def __str__(self) -> str:
        if self.scheme == "ipc":
            return f"ipc://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        """True when traffic never leaves this machine (then no CURVE keys or online access are needed)."""
        if self.scheme == "ipc":
            return True
        if self.host.lower() in LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_address(text: str) -> Address:
    """`tcp://host:port` or `ipc://path`; raises ValueError with a sentence a user can act on."""
    text = text.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ValueError(f"\"{text}\" has no scheme: write it as tcp://host:port, e.g. {DEFAULT_ADDRESS}")
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported scheme \"{scheme}\": use tcp://host:port (or ipc://path on one machine)")
    if scheme == "ipc":
        if not rest:
            raise ValueError("ipc:// needs a socket path, e.g. ipc:///tmp/latentforge.sock")
        return Address("ipc", "", 0, rest)
    if rest.startswith("["):  # IPv6: tcp://[::1]:5555
        host, bracket, port_text = rest[1:].partition("]")
        port_text = port_text.removeprefix(":") if bracket else ""
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon:  # no port at all
            host, port_text = rest, ""
    if not host or "/" in host or " " in host:
        raise ValueError(f"\"{text}\" has no valid host: write it as tcp://host:port")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"\"{text}\" needs a port between 1 and 65535, e.g. tcp://{host}:5555")
    return Address("tcp", host, int(port_text))
