"""File names as a person reads them.

A file system allows any bytes but ``/`` and NUL in a name; Python hands names that are not
UTF-8 over as strings with lone surrogates (``caf\\udce9.png``, PEP 383), which open the file
but cannot be printed, written as UTF-8 JSON or stored in an Arrow string column. The library
keeps such names as they are (:mod:`clipsearch.store.schema` stores them losslessly) and shows
them with :func:`display_path`.
"""

from __future__ import annotations

import os


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` readable and printable: bytes that are not UTF-8 shown as ``\\xe9``.

    A name that is valid UTF-8 is returned as it is.
    """
    text = os.fspath(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
