"""The HTTP server: a JSON API and a search page over one store.

    from clipsearch.collection import open_store
    from clipsearch.server import create_app, serve

    app = create_app(open_store("my-store"))
    serve(app)                                      # http://127.0.0.1:8000/ until Ctrl+C

``clipsearch serve`` does the same from the command line. Listening beyond this machine needs a
token, which then guards every API call: ``serve(create_app(store, token=T, private=True),
host="0.0.0.0")``; see :mod:`clipsearch.server.listen`. See :mod:`clipsearch.server.app` for the
routes and :mod:`clipsearch.server.limits` for what is refused before a route runs.

FastAPI loads when the app is built (:func:`create_app`, :func:`parse_size`), not on
``import clipsearch.server``, so ``clipsearch --help`` can read the token's variable name here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from clipsearch.server.listen import LOCAL_HOSTS, TOKEN_ENV, check_bind, is_loopback, serve

if TYPE_CHECKING:
    from clipsearch.server.app import create_app
    from clipsearch.server.limits import DEFAULT_MAX_BODY, parse_size

# public name -> module that defines it, imported on first use
_LAZY = {
    "create_app": "clipsearch.server.app",
    "DEFAULT_MAX_BODY": "clipsearch.server.limits",
    "parse_size": "clipsearch.server.limits",
}

__all__ = [
    "DEFAULT_MAX_BODY",
    "LOCAL_HOSTS",
    "TOKEN_ENV",
    "check_bind",
    "create_app",
    "is_loopback",
    "parse_size",
    "serve",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'clipsearch.server' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
