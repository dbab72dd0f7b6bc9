"""Optional CurveZMQ: encrypt the PUB and control sockets and admit only known client keys.

Keys are ZeroMQ certificate files (`zmq.auth.create_certificates` writes `NAME.key` with the
public key and `NAME.key_secret` with both). The server needs its secret certificate and the
public certificates of the clients it admits (a folder of `*.key` files or a list of files).

Why a `CurveServer` object and not just keys: ZeroMQ asks a ZAP handler on the *same context*
whether a client may connect, and a CURVE server socket without a ZAP handler admits any
client that knows the server's public key. So the keys, the authenticator thread and the
context travel together, and `apply()` refuses a socket from another context.

Example:
    >>> import tempfile, zmq, zmq.auth
    >>> folder = tempfile.mkdtemp()
    >>> _, server_secret = zmq.auth.create_certificates(folder, "server")
    >>> client_public, _ = zmq.auth.create_certificates(folder, "client")
    >>> keys = load_server_keys(server_secret, [client_public])
    >>> len(keys.allowed_client_keys)
    1
    >>> server = CurveServer(keys, context=zmq.Context(), allow_addresses=["127.0.0.1"])
    >>> sock = server.context.socket(zmq.PUB)
    >>> server.apply(sock)
    >>> sock.close(linger=0); server.close()
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from inspectd.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurveServerKeys:
    """The server's key pair and the z85 public keys of the clients it admits."""

    public_key: bytes
    secret_key: bytes
    allowed_client_keys: frozenset[bytes]


@dataclass(frozen=True)
class CurveClientKeys:
    """A client's key pair and the public key of the server it trusts.

    Example:
        >>> import zmq
        >>> public, secret = zmq.curve_keypair()
        >>> server_public, _ = zmq.curve_keypair()
        >>> sock = zmq.Context.instance().socket(zmq.SUB)
        >>> CurveClientKeys(public, secret, server_public).apply(sock)
        >>> sock.close(linger=0)
    """

    public_key: bytes
    secret_key: bytes
    server_public_key: bytes

    def apply(self, socket: zmq.Socket) -> None:
        """Make `socket` a CURVE client of the server; call before `connect`."""
        socket.curve_publickey = self.public_key
        socket.curve_secretkey = self.secret_key
        socket.curve_serverkey = self.server_public_key


def load_server_keys(
    server_secret_file: str | os.PathLike[str],
    allowed_clients: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> CurveServerKeys:
    """Read the server certificate and the allowed clients' public certificates.

    `allowed_clients` is a folder (every `*.key` file in it) or a list of certificate files.
    Raises `ConfigError` naming the file when one is missing or holds no key.

    Example:
        >>> import tempfile, zmq.auth
        >>> folder = tempfile.mkdtemp()
        >>> _, secret = zmq.auth.create_certificates(folder, "server")
        >>> _ = zmq.auth.create_certificates(folder, "plc")
        >>> len(load_server_keys(secret, folder).allowed_client_keys)  # server.key + plc.key
        2
    """
    public_key, secret_key = _load(server_secret_file)
    if secret_key is None:
        msg = f"{server_secret_file}: no secret-key in this certificate (use the .key_secret file)"
        raise ConfigError(msg)
    if isinstance(allowed_clients, (str, os.PathLike)) and Path(allowed_clients).is_dir():
        files: Sequence[Path] = sorted(Path(allowed_clients).glob("*.key"))
        if not files:
            logger.warning("CurveZMQ: no *.key files in %s: no client will be admitted", allowed_clients)
    elif isinstance(allowed_clients, (str, os.PathLike)):
        files = [Path(allowed_clients)]
    else:
        files = [Path(item) for item in allowed_clients]
    allowed = frozenset(_load(path)[0] for path in files)
    return CurveServerKeys(public_key=public_key, secret_key=secret_key, allowed_client_keys=allowed)


def load_client_keys(
    client_secret_file: str | os.PathLike[str], server_public_file: str | os.PathLike[str]
) -> CurveClientKeys:
    """Read a client's certificate and the server's public certificate.

    Example:
        >>> import tempfile, zmq.auth
        >>> folder = tempfile.mkdtemp()
        >>> server_public, _ = zmq.auth.create_certificates(folder, "server")
        >>> _, client_secret = zmq.auth.create_certificates(folder, "client")
        >>> len(load_client_keys(client_secret, server_public).server_public_key)
        40
    """
    public_key, secret_key = _load(client_secret_file)
    if secret_key is None:
        msg = f"{client_secret_file}: no secret-key in this certificate (use the .key_secret file)"
        raise ConfigError(msg)
    server_public_key, _ = _load(server_public_file)
    return CurveClientKeys(public_key=public_key, secret_key=secret_key, server_public_key=server_public_key)


class _AllowedKeys:
    """Credentials provider for the ZAP authenticator: a fixed set of z85 public keys."""

    def __init__(self, keys: frozenset[bytes]) -> None:
        self._keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in self._keys
        if not allowed:
            logger.warning("CurveZMQ: refused a client with unknown public key %s", key.decode(errors="replace"))
        return allowed


class CurveServer:
    """Server keys plus a ZAP authenticator thread on `context`, applied to server sockets.

    `allow_addresses` (e.g. ["127.0.0.1"]) additionally restricts clients by IP; None admits
    any address that presents an allowed key. The authenticator starts with the first
    `apply()` (or `start()`); `close()` it after the sockets that use it.
    """

    def __init__(
        self,
        keys: CurveServerKeys,
        *,
        context: zmq.Context | None = None,
        allow_addresses: Sequence[str] | None = None,
    ) -> None:
        self.keys = keys
        self.context = context or zmq.Context.instance()
        self.allow_addresses = tuple(allow_addresses or ())
        self._authenticator: ThreadAuthenticator | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the ZAP authenticator (idempotent)."""
        with self._lock:
            if self._authenticator is not None:
                return
            authenticator = ThreadAuthenticator(self.context, log=logging.getLogger("inspectd.wire.curve.zap"))
            authenticator.start()
            if self.allow_addresses:
                authenticator.allow(*self.allow_addresses)
            authenticator.configure_curve_callback("*", credentials_provider=_AllowedKeys(self.keys.allowed_client_keys))
            self._authenticator = authenticator

    def apply(self, socket: zmq.Socket) -> None:
        """Make `socket` a CURVE server guarded by the authenticator; call before `bind`."""
        if socket.context is not self.context:
            msg = "CurveServer.apply: the socket must come from the CurveServer's context (ZAP is per context)"
            raise ValueError(msg)
        self.start()
        socket.curve_secretkey = self.keys.secret_key
        socket.curve_publickey = self.keys.public_key
        socket.curve_server = True

    def close(self) -> None:
        """Stop the authenticator thread."""
        with self._lock:
            if self._authenticator is not None:
                self._authenticator.stop()
                self._authenticator = None


def _load(path: str | os.PathLike[str]) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        msg = f"cannot read CurveZMQ certificate {path}: {exc}"
        raise ConfigError(msg) from exc
