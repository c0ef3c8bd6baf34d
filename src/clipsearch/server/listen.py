"""Where the server listens, and what that asks for: no address beyond this machine without a token.

- :func:`check_bind` is the rule. A server on a loopback address (127.0.0.0/8, ::1,
  ``localhost``) answers this machine only; any other address answers whoever can reach it, so
  it needs a token, and the token then guards every API call (``create_app(private=True)``).
- :func:`answered_hosts` lists the ``Host`` headers a server on that address answers (the
  defence against DNS rebinding, see :class:`clipsearch.server.limits.HostCheck`).
- :func:`serve` runs an app from :func:`clipsearch.server.create_app` under uvicorn after the
  rule, so a Python user gets what ``clipsearch serve`` gives.

Nothing here imports FastAPI or uvicorn at module level: ``clipsearch --help`` reads
:data:`TOKEN_ENV` from here.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

TOKEN_ENV = "CLIPSEARCH_TOKEN"
"""The environment variable ``clipsearch serve`` reads the token from."""

MIN_TOKEN_CHARS = 16
"""Shorter tokens are accepted with a warning: they can be guessed."""

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
"""Host names a server bound to the loopback interface answers to."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for anything else."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token.

    Raises:
        ValueError: ``host`` is not a loopback address and there is no token, or the token is blank.
    """
    if token is not None and not token.strip():
        raise ValueError(f"--token is empty; give a secret string (or unset ${TOKEN_ENV})")
    if not is_loopback(host) and token is None:
        raise ValueError(
            f"refusing to listen on {host} without a token: anyone who can reach this machine could read the store; "
            f"add --token SECRET (or set ${TOKEN_ENV}), or keep the default --host 127.0.0.1"
        )


def answered_hosts(host: str, extra: Iterable[str] = ()) -> list[str]:
    """The ``Host`` headers a server listening on ``host`` answers: on a loopback address the
    local names, ``host`` and ``extra``; elsewhere ``extra``, or any (``"*"``) when none is given."""
    extra = list(extra)
    if is_loopback(host):
        return [*LOCAL_HOSTS, host, *extra]
    return extra or ["*"]


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening, made before anything else starts, so an
    address in use fails at once and ``port`` 0 (any free port) is known before it is announced.

    Raises:
        ValueError: the address is in use, not this machine's, or not allowed.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise ValueError(f"cannot listen on {host}:{port}: {reason}; choose another --port or --host") from None
    return sock


def serve(
    app: FastAPI,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    sock: socket.socket | None = None,
) -> None:
    """Serve ``app`` (from :func:`clipsearch.server.create_app`) on ``host:port`` until interrupted.

    ``sock``: an already listening socket for ``host`` (:func:`listening_socket`), used instead
    of binding ``port`` again.

    Raises:
        ValueError: ``host`` is beyond this machine and the app has no token (see
            :func:`check_bind`), or its token guards only writes (build it with ``private=True``).
    """
    state = app.state.clipsearch
    check_bind(host, state.token)
    if not is_loopback(host) and not state.private:
        raise ValueError(
            f"refusing to listen on {host} with the store readable without the token; "
            "build the app with create_app(..., private=True)"
        )
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run(sockets=[sock] if sock is not None else None)
