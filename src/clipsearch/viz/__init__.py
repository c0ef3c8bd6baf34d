"""Pictures clipsearch draws, one module each: heatmaps, overlays, grids, curves.

Every drawing function writes a PNG with matplotlib's Agg backend (never needs a display).
"""

from __future__ import annotations


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, imported lazily."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
