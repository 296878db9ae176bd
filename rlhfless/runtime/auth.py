"""CURVE keys and authenticated sockets for every link that crosses a machine boundary.

A node agent executes code on request, so nothing may reach it unauthenticated. Every tcp://
link is ZeroMQ CURVE (encrypted, and the client proves it holds an allowed key); a ZAP handler
(:class:`zmq.auth.thread.ThreadAuthenticator`) accepts only the public keys in ``DIR/clients``.
A peer with no key, a wrong key, or speaking plaintext fails the handshake inside libzmq: its
messages never reach our code, and the refusal is logged (``rlhfless.auth``) and counted.

Key directory (``rlhfless keys init DIR``), copied to every machine of the cluster::

    DIR/server.key          server public key    (clients pin it)
    DIR/server.key_secret   server secret key    (agents and the controller's tcp ROUTER)
    DIR/client.key_secret   client secret key    (the controller and remote functions)
    DIR/clients/*.key       allowed client public keys (the allow-list)
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger("rlhfless.auth")

ZAP_DOMAIN = "rlhfless"  # the authenticator answers for this domain only
KEYS_ENV = "RLHFLESS_KEYS"  # where a remote function finds the keys directory
_FAIL_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class KeyError_(Exception):
    """The key directory is missing or incomplete."""


def keys_init(directory: str | os.PathLike[str], force: bool = False) -> Path:
    """Create the cluster's server and client key pairs; the client key is allowed."""
    root = Path(directory)
    if (root / "server.key_secret").exists() and not force:
        raise FileExistsError(f"{root} already holds keys; pass force=True to replace them")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)  # secret keys: readable by this user only
    zmq.auth.create_certificates(root, "server")
    zmq.auth.create_certificates(root, "client")
    clients = root / "clients"
    clients.mkdir(exist_ok=True)
    shutil.copy(root / "client.key", clients / "client.key")
    for secret in root.glob("*.key_secret"):
        os.chmod(secret, 0o600)
    return root


class Keys:
    """The key pairs of one cluster, loaded from a key directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        try:
            self.server_public, self.server_secret = zmq.auth.load_certificate(
                self.dir / "server.key_secret"
            )
            self.client_public, self.client_secret = zmq.auth.load_certificate(
                self.dir / "client.key_secret"
            )
        except (OSError, ValueError) as exc:
            raise KeyError_(
                f"cannot load CURVE keys from {self.dir}: {exc} (create them with "
                "`rlhfless keys init DIR` and copy DIR to every machine)"
            ) from None
        if self.server_secret is None or self.client_secret is None:
            raise KeyError_(f"{self.dir}: a *.key_secret file holds no secret key")
        self.clients = self.dir / "clients"
        if not any(self.clients.glob("*.key")):
            raise KeyError_(f"{self.clients} lists no allowed client keys")

    def server(self, sock: zmq.Socket) -> None:
        """Make ``sock``'s next bind a CURVE server (options apply to later binds only)."""
        sock.curve_secretkey = self.server_secret
        sock.curve_publickey = self.server_public
        sock.curve_server = True
        sock.zap_domain = ZAP_DOMAIN.encode()

    def client(self, sock: zmq.Socket) -> None:
        """Make ``sock``'s next connect a CURVE client that pins the server's key."""
        sock.curve_secretkey = self.client_secret
        sock.curve_publickey = self.client_public
        sock.curve_serverkey = self.server_public


class Guard:
    """The ZAP allow-list on one context, plus a monitor that logs refused handshakes."""

    def __init__(self, ctx: zmq.Context, keys: Keys) -> None:
        # A synchronous shadow: the authenticator's thread needs plain sockets on the same context.
        self._ctx: zmq.Context = zmq.Context.shadow(ctx.underlying)
        self.auth = ThreadAuthenticator(self._ctx, log=log)
        self.auth.start()
        self.auth.configure_curve(domain=ZAP_DOMAIN, location=str(keys.clients))
        self.refused = 0
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def watch(self, sock: zmq.Socket, what: str) -> None:
        """Log (and count) every failed handshake on ``sock``: plaintext, no key, wrong key."""
        mon: zmq.Socket = zmq.Socket.shadow(sock.get_monitor_socket(_FAIL_EVENTS).underlying)
        thread = threading.Thread(target=self._run, args=(mon, what), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _run(self, mon: zmq.Socket, what: str) -> None:
        try:
            while not self._stop.is_set():
                if not mon.poll(200):
                    continue
                event = recv_monitor_message(mon)
                self.refused += 1
                log.warning(
                    "%s refused a peer at %s: %s (error %s)",
                    what,
                    event.get("endpoint", b"?").decode(errors="replace"),
                    zmq.Event(event["event"]).name,
                    event.get("value"),
                )
        except zmq.ZMQError:
            pass  # the context is closing
        finally:
            mon.close(linger=0)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:  # each sees the flag within one poll (200 ms)
            thread.join(timeout=10.0)
            if thread.is_alive():
                log.warning("a handshake monitor thread did not stop within 10 s")
        try:
            self.auth.stop()
        except zmq.ZMQError as exc:  # its pipe is gone: nothing is left to tell it to stop
            log.warning("stopping the CURVE authenticator failed: %s", exc)
