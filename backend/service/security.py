"""Who may talk to the service: loopback by default, ZeroMQ CURVE with an allow-list of client keys otherwise.

A keys folder holds the server's key pair (`server.key`, `server.key_secret`), `authorized_clients/`
(the public keys the service accepts: the allow-list) and `clients/` (key pairs made for clients; hand
each its `.key_secret` and the server's `server.key`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import sys
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from backend.errors import LatentForgeError

SERVER_KEY, ALLOWED_DIR, CLIENTS_DIR = "server", "authorized_clients", "clients"
_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


class SecurityError(LatentForgeError):
    code = "insecure"


def default_keys_dir() -> Path:
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "latentforge" / "keys"


def is_loopback(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address; anything else is reachable from outside."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host.split(";")[-1] == "localhost":  # "source;host" form names the far end last
        return True
    try:
        return ipaddress.ip_address(host.split(";")[-1]).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name


def check_bind(endpoint: str, keys_dir: Path | None) -> None:
    """Refuse, before anything binds, to serve a reachable address without CURVE keys."""
    if keys_dir is None and not is_loopback(endpoint):
        raise SecurityError(
            f"refusing to listen on {endpoint} without encryption and client keys: anyone who can reach it "
            "could submit jobs",
            "create keys with `latentforge keys --client NAME` and start with --keys DIR, or bind to "
            "tcp://127.0.0.1:PORT")


def make_keys(folder: Path, clients: list[str]) -> dict[str, Path]:
    """Create the server pair (once) and a pair per client name, allow-listing each client's public key."""
    folder = Path(folder).expanduser()
    for sub in ("", ALLOWED_DIR, CLIENTS_DIR):
        (folder / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    made: dict[str, Path] = {}
    if not (folder / f"{SERVER_KEY}.key_secret").is_file():
        zmq.auth.create_certificates(folder, SERVER_KEY)
        os.chmod(folder / f"{SERVER_KEY}.key_secret", 0o600)
    made["server public key"] = folder / f"{SERVER_KEY}.key"
    for name in clients:
        if not _CLIENT_NAME.fullmatch(name):
            raise LatentForgeError(f"client name {name!r} may use letters, digits, '.', '_' and '-' only")
        if (folder / CLIENTS_DIR / f"{name}.key_secret").exists():
            raise LatentForgeError(f"a client named {name!r} already has keys", "choose another name")
        public, secret = zmq.auth.create_certificates(folder / CLIENTS_DIR, name)
        os.chmod(secret, 0o600)
        shutil.copy(public, folder / ALLOWED_DIR / f"{name}.key")
        made[f"client {name} secret key"] = Path(secret)
    return made


def server_keys(folder: Path) -> tuple[bytes, bytes]:
    """(public, secret) of the server's key pair in `folder`."""
    path = Path(folder).expanduser() / f"{SERVER_KEY}.key_secret"
    if not path.is_file():
        raise LatentForgeError(f"no server key pair in {str(folder)!r}",
                               f"create one with `latentforge keys --dir {folder}`")
    public, secret = zmq.auth.load_certificate(path)
    return public, secret


def allowed_dir(folder: Path) -> Path:
    path = Path(folder).expanduser() / ALLOWED_DIR
    if not path.is_dir() or not any(path.glob("*.key")):
        raise LatentForgeError(f"{str(path)!r} lists no client keys, so no one could connect",
                               "add one with `latentforge keys --client NAME`")
    return path


class Curve:
    """CURVE for the service's listening sockets: the key pair, and a ZAP handler that asks this object
    whether a client key is on the allow-list (as last read, so a folder being edited never empties it)."""

    def __init__(self, context: zmq.Context, folder: Path) -> None:
        self.public, self.secret = server_keys(folder)
        self.allowed = allowed_dir(folder)
        self._keys: dict[str, bytes] = {}  # file name → z85 public key
        self.reload()
        self.auth = ThreadAuthenticator(context)
        self.auth.start()
        self.auth.configure_curve_callback(domain="*", credentials_provider=self)

    @property
    def allowed_keys(self) -> frozenset[str]:
        """The z85 public keys clients may use (what ZeroMQ reports as a message's User-Id)."""
        return frozenset(k.decode("ascii") for k in self._keys.values())

    def callback(self, domain: str, key: bytes) -> bool:  # on the authenticator's thread, per handshake
        return key in self._keys.values()

    def reload(self) -> frozenset[str]:
        """Re-read the allow-list; returns the keys that left it. Files may vanish or be half written while
        this reads: a key file that cannot be read keeps its last good key, one that is gone is revoked, and
        a folder that is missing or lists no key at all keeps the whole last good set (and says so)."""
        before = self.allowed_keys
        try:
            names = sorted(p.name for p in self.allowed.iterdir() if p.name.endswith(".key"))
        except OSError as exc:
            names, why = [], f"cannot list it ({exc.strerror or exc})"
        else:
            why = "it lists no client keys"
        if not names:
            if self._keys:
                print(f"service: the allow-list {self.allowed} is unusable ({why}); keeping the last good "
                      f"set of {len(self._keys)} key(s)", file=sys.stderr, flush=True)
            return frozenset()
        keys: dict[str, bytes] = {}
        for name in names:
            try:
                public, _ = zmq.auth.load_certificate(self.allowed / name)
            except FileNotFoundError:
                continue  # removed between listing and reading: revoked
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                if name in self._keys:  # being rewritten, or unreadable for now: keep what it held
                    keys[name] = self._keys[name]
                print(f"service: cannot read client key {name} ({exc}); "
                      f"{'keeping its last good key' if name in keys else 'skipping it'}", file=sys.stderr,
                      flush=True)
                continue
            if public:
                keys[name] = public
        if not keys and self._keys:
            print(f"service: no key of the allow-list {self.allowed} could be read; keeping the last good set",
                  file=sys.stderr, flush=True)
            return frozenset()
        self._keys = keys
        return before - self.allowed_keys

    def secure(self, socket: zmq.Socket) -> None:
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True

    def stop(self) -> None:
        self.auth.stop()
