"""``clipsearch serve``: the search page and JSON API over a store, on 127.0.0.1 by default.

What an address asks for (a token beyond this machine) is the server's rule,
:mod:`clipsearch.server.listen`; this command parses, loads the store and says where it serves.
"""

from __future__ import annotations

from typing import Annotated

import typer

from clipsearch.cli.common import StoreOption, err_console, handle_errors
from clipsearch.server.listen import (
    MIN_TOKEN_CHARS,
    TOKEN_ENV,
    answered_hosts,
    check_bind,
    listening_socket,
    is_loopback,
)
from clipsearch.server.listen import serve as serve_app


@handle_errors
def serve(
    store: StoreOption = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on. Anything but a loopback address needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="Port to listen on.")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar=TOKEN_ENV,
            help=f"Secret that adding images needs (and, off this machine, every API call). Prefer ${TOKEN_ENV}: "
            "command lines are visible to other users.",
            show_default=False,
        ),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option("--cors-origin", help="An origin (https://host:port) whose pages may call the API; repeatable. Default: none."),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option("--allowed-host", help="A Host header to answer besides localhost names; repeatable."),
    ] = None,
    max_body: Annotated[str, typer.Option("--max-body", help="Largest request body (uploads), e.g. 20MB.")] = "20MB",
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level: critical, error, warning, info, debug.")] = "info",
) -> None:
    """Serve the search page and the JSON API (OpenAPI schema at /openapi.json).

    Binds 127.0.0.1 unless told otherwise. Any other address needs a token, which then guards every API call.

    Adding images by upload always needs the token.

    Example:

        clipsearch serve --store my-store --port 8000
    """
    from clipsearch.server.limits import parse_size

    check_bind(host, token)
    cap = parse_size(max_body)
    levels = ("critical", "error", "warning", "info", "debug")
    if log_level.lower() not in levels:
        raise ValueError(f"--log-level {log_level!r} is not one of {', '.join(levels)}")
    local = is_loopback(host)
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        err_console.print(f"[yellow]warning:[/] the token has {len(token)} characters; use at least {MIN_TOKEN_CHARS} random ones")

    from clipsearch.collection import open_store
    from clipsearch.store import resolve_store_uri

    st = open_store(resolve_store_uri(store), create=False)
    with err_console.status(f"loading model {st.model_name} ...", spinner="dots"):
        st.encoder  # noqa: B018 - load now, so the first search is not the slow one
        st.text_encoder  # noqa: B018 - and what embeds text queries (an ONNX text tower when exported)
    sock = listening_socket(host, port)  # before the line below says it is serving; port 0: the one it got
    port = sock.getsockname()[1]

    from clipsearch.server import create_app

    app = create_app(
        st,
        token=token,
        max_body=cap,
        cors_origins=tuple(cors_origin or ()),
        private=not local,
        allowed_hosts=answered_hosts(host, allowed_host or ()),
    )
    shown = f"[{host}]" if ":" in host else host
    err_console.print(
        f"serving {st.root} ({len(st):,} items, model {st.model_name}) at http://{shown}:{port}/"
        + ("" if local else "  [yellow](every API call needs the token)[/]"),
        highlight=False,
        soft_wrap=True,
    )
    serve_app(app, host=host, port=port, log_level=log_level.lower(), sock=sock)


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the ``clipsearch`` app."""
    app.command("serve")(serve)
