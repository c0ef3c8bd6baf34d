"""The version of clipsearch (one place; the package and the store header read it)."""

__version__ = "0.1.0"
