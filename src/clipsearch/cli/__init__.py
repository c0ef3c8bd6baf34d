"""The command-line interface; see :mod:`clipsearch.cli.main`."""
