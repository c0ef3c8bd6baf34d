"""The HTTP server: a JSON API and a search page over one store.

    from clipsearch.collection import open_store
    from clipsearch.server import create_app

    app = create_app(open_store("my-store"))        # serve with: uvicorn.run(app, host="127.0.0.1")

``clipsearch serve`` does the same from the command line. See :mod:`clipsearch.server.app` for
the routes and :mod:`clipsearch.server.limits` for what is refused before a route runs.
"""

from __future__ import annotations

from clipsearch.server.app import create_app
from clipsearch.server.limits import DEFAULT_MAX_BODY, LOCAL_HOSTS, is_loopback, parse_size

__all__ = ["DEFAULT_MAX_BODY", "LOCAL_HOSTS", "create_app", "is_loopback", "parse_size"]
