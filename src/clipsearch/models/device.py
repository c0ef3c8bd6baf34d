"""Which torch device a model runs on: ``cpu`` unless asked otherwise.

Every command reads ``$CLIPSEARCH_DEVICE`` (``clipsearch train`` also takes ``--device``):
``cpu`` (the default: the same numbers on every machine), ``cuda`` or ``cuda:N``, ``mps``
(Apple), or ``auto`` (the first GPU torch sees, else the CPU). A GPU that is asked for and not
there is an error, not a silent fall back to the CPU.
"""

from __future__ import annotations

import os
import re

from clipsearch.errors import ClipsearchError

DEVICE_ENV = "CLIPSEARCH_DEVICE"
DEFAULT_DEVICE = "cpu"
CHOICES = "cpu, cuda, cuda:N, mps or auto"


class DeviceUnavailable(ClipsearchError, ValueError):
    """A device name that is malformed, or names hardware this machine does not have."""


def resolve_device(device: str | None = None) -> str:
    """The torch device name to run on.

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``; ``None``: ``$CLIPSEARCH_DEVICE``,
            else ``cpu``.

    Returns:
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` (``auto`` resolved).

    Raises:
        DeviceUnavailable: an unknown name, or a GPU torch does not see.
    """
    raw = device if device is not None else (os.environ.get(DEVICE_ENV) or DEFAULT_DEVICE)
    name = raw.strip().lower()
    source = f"${DEVICE_ENV}={raw!r}" if device is None else f"device {raw!r}"
    if name == "cpu":
        return "cpu"  # without importing torch: most commands never need it
    if name not in ("auto", "mps") and not re.fullmatch(r"cuda(:\d+)?", name):
        raise DeviceUnavailable(f"unknown {source}; use {CHOICES}")
    import torch

    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if name == "auto":
        return "cuda" if cuda else ("mps" if mps else "cpu")
    if name == "mps":
        if not mps:
            raise DeviceUnavailable(f"{source}: torch sees no Apple GPU (MPS) here; use cpu or auto")
        return "mps"
    if not cuda:
        raise DeviceUnavailable(f"{source}: torch sees no CUDA GPU on this machine; use cpu or auto")
    index = int(name.split(":")[1]) if ":" in name else 0
    if index >= torch.cuda.device_count():
        raise DeviceUnavailable(f"{source}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    return name
