"""Indexing: files, folders and texts into a store, as stages.

``scan -> plan -> decode -> embed -> write``: each stage is a module of this package with
plain-data inputs and outputs (paths, stat records, pixel arrays, vectors, rows), so it can be
run and timed alone or handed to another engine; :func:`index_paths` composes them in one
process (see :mod:`clipsearch.ingest.run`). Python users call
:meth:`clipsearch.Collection.add`, which calls :func:`index_paths` with the store's model.
"""

from __future__ import annotations

from clipsearch.ingest.decode import MAX_FILE_BYTES, Prepared, default_workers, prepare_image, prepared_images
from clipsearch.ingest.documents import API_SOURCE, TextItem, read_text_items
from clipsearch.ingest.embed import embed_images, embed_texts
from clipsearch.ingest.plan import ImagePlan, plan_images, plan_prune
from clipsearch.ingest.run import index_paths
from clipsearch.ingest.scan import Document, ImageInput, Scan, is_text_only, scan
from clipsearch.ingest.summary import Failure, IndexSummary
from clipsearch.ingest.write import StoreWriter, remove_targets

__all__ = [
    "API_SOURCE",
    "MAX_FILE_BYTES",
    "Document",
    "Failure",
    "ImageInput",
    "ImagePlan",
    "IndexSummary",
    "Prepared",
    "Scan",
    "StoreWriter",
    "TextItem",
    "default_workers",
    "embed_images",
    "embed_texts",
    "index_paths",
    "is_text_only",
    "plan_images",
    "plan_prune",
    "prepare_image",
    "prepared_images",
    "read_text_items",
    "remove_targets",
    "scan",
]
