"""A store paired with its model: what :func:`open_store` returns to Python users.

The store (:mod:`clipsearch.store`) keeps rows and vectors and knows its model only by name;
indexing (:mod:`clipsearch.ingest`) and search (:mod:`clipsearch.search`) take the store and an
encoder. A :class:`Collection` holds both, loading the model on first use, so a notebook reads::

    import clipsearch
    photos = clipsearch.open_store("my-store", model="demo")
    photos.add(["~/Pictures"])
    for hit in photos.search("a big blue star", k=5):
        print(hit.score, hit.path)

The choice of a model for a new store lives here too, so the CLI and Python users get the same.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clipsearch.errors import StoreError
from clipsearch.ingest import index_paths, is_text_only, remove_targets
from clipsearch.models.lazy import LazyEncoder
from clipsearch.models.registry import DEFAULT_MODEL
from clipsearch.search import search_store
from clipsearch.store import ModelRecord, Store, resolve_store_uri

if TYPE_CHECKING:
    from clipsearch.events import ProgressCallback
    from clipsearch.ingest import IndexSummary
    from clipsearch.ingest.reembed import ReembedSummary
    from clipsearch.models.base import Encoder
    from clipsearch.store import Hit

MODEL_ENV = "CLIPSEARCH_MODEL"
"""Names the model a new store uses when none is given."""
CLIP_MODEL = DEFAULT_MODEL
"""Real CLIP (``openai/clip-vit-base-patch32``): what a new store of images uses when it is cached
or can be downloaded."""
DEMO_MODEL = "demo"
"""The bundled offline model: a new store of images uses it when real CLIP cannot be had."""
TEXT_MODEL = "minilm"
"""What a new store built from text alone uses (a real sentence encoder, offline)."""

log = logging.getLogger("clipsearch")


@dataclass(frozen=True)
class ModelChoice:
    """The model a new store gets when none is named, and why, in words a log line can hold."""

    name: str
    why: str
    encoder: Encoder | None = None  # loaded while choosing (real CLIP), else None


def default_model(sources: Iterable[str | os.PathLike[str]] = ()) -> ModelChoice:
    """The model for a new store when none is given, the same for the CLI and Python:

    ``$CLIPSEARCH_MODEL`` when set; :data:`TEXT_MODEL` when ``sources`` hold text documents and
    no image; else real CLIP (:data:`CLIP_MODEL`) when it is in the Hugging Face cache or can be
    downloaded now; else the bundled :data:`DEMO_MODEL`, saying why.
    """
    named = os.environ.get(MODEL_ENV, "").strip()
    if named:
        return ModelChoice(named, f"${MODEL_ENV} names it")
    sources = list(sources)
    if sources and is_text_only(sources):
        return ModelChoice(TEXT_MODEL, "the sources are text only: a sentence encoder")
    from clipsearch.errors import ModelNotAvailable
    from clipsearch.models.registry import load_model

    try:
        return ModelChoice(CLIP_MODEL, "real CLIP", load_model(CLIP_MODEL))
    except ModelNotAvailable as e:
        return ModelChoice(DEMO_MODEL, f"the bundled offline model, since {CLIP_MODEL} cannot be had: {e}")


class Collection:
    """A :class:`~clipsearch.store.Store` and the encoder that fills it.

    Everything the store reads (``get``, ``count``, ``stats``, ``nearest``, ``root``, ``meta``,
    ...) is read through the collection too; what needs the model (``add``, ``search``,
    ``encoder``) loads it on first use, so opening a collection is cheap.
    """

    def __init__(
        self, store: Store, encoder: Encoder | None = None, *, identity_checked: bool = False, backend: str = "torch"
    ):
        self.store = store
        self.backend = backend
        self._given = encoder
        self._identity_checked = identity_checked
        if encoder is not None:
            self._check_dim(encoder, "makes")
        self._model = LazyEncoder(self._load_encoder)
        self._text = LazyEncoder(self._load_text_encoder)

    def _load_encoder(self, *, check: bool = True) -> Encoder:
        """The model (the one given, else loaded by the store's name), checked to be the one
        that made the store's vectors."""
        encoder = self._given
        if encoder is None:
            from clipsearch.models.registry import load_model

            encoder = load_model(self.store.model_name, weights=self.store.meta.get("weights"), backend=self.backend)
            self._check_dim(encoder, "now makes")
        follow_store_guard(self.store, encoder)
        if check and not self._identity_checked:
            self._check_identity(encoder)
        return encoder

    def _check_identity(self, encoder: Encoder) -> None:
        """Refuse a model whose weights or preprocessing changed since the store was built
        (its probe moved, :mod:`clipsearch.models.fingerprint`), and a store left half re-embedded."""
        from clipsearch.models.fingerprint import probe

        self._check_probe(lambda: probe(encoder))

    def _check_probe(self, current: Callable[[], dict[str, list[list[float]]]]) -> None:
        """:meth:`_check_identity` for a probe (``current()``, taken only when the store has one
        to compare with): the full model's, or an ONNX bundle's text probe."""
        from clipsearch.ingest.reembed import REEMBEDDING_KEY
        from clipsearch.models.fingerprint import SAME_MODEL_COSINE, probe_agreement

        root, name = self.store.root, self.store.model_name
        if self.store.meta.get(REEMBEDDING_KEY) is not None:
            raise StoreError(
                f"store {root} is being re-embedded with the changed model {name!r} and holds vectors of both; "
                f"finish with: clipsearch reindex --store {root}"
            )
        recorded = self.store.probe()
        if recorded is None:
            return  # a store from before probes: recorded at its next indexing run
        agreement = probe_agreement(recorded["vectors"], current())
        if agreement < SAME_MODEL_COSINE:
            raise StoreError(
                f"model {name!r} is not the one store {root} was built with: its weights or preprocessing changed "
                f"(cosine {agreement:.3f} on reference inputs); re-embed every item with: clipsearch reindex --store {root}"
            )

    def _load_text_encoder(self) -> Encoder:
        """What embeds text queries: on the ``onnx``/``auto`` backends, the text tower of the
        model's ONNX bundle when one exists for its current weights (no torch, no image tower),
        else the model itself (whose first load under those backends exports the bundle, so the
        next process starts light); on ``torch``, the model's text tower alone where its backend
        allows (:func:`~clipsearch.models.registry.load_text_model`) unless the model is loaded
        anyway."""
        if self._given is None and self.backend != "torch":
            onnx = self._onnx_text_encoder()
            return onnx if onnx is not None else self._model.get()
        if self._given is not None or self._model.loaded:
            return self._model.get()
        from clipsearch.models.registry import load_text_model

        encoder = load_text_model(self.store.model_name, weights=self.store.meta.get("weights"))
        if encoder.modalities != ("text",):  # the backend has no lighter text path: this is the model
            return self._model.get()
        self._check_dim(encoder, "now makes")
        if not self._identity_checked:
            self._check_identity(encoder)  # on the text probe: the tower that answers
        return encoder

    def _onnx_text_encoder(self) -> Encoder | None:
        """The ONNX text tower of the store's model, checked like the model itself (dimension,
        and the bundle's text probe against the store's); None when there is no usable bundle."""
        if importlib.util.find_spec("onnxruntime") is None:
            return None
        from clipsearch.models.onnx_runtime import OnnxTextEncoder, bundle_dir

        name, weights = self.store.model_name, self.store.meta.get("weights")
        folder = bundle_dir(name, weights)
        if folder is None:
            return None
        try:
            encoder = OnnxTextEncoder(folder)
        except Exception as exc:  # noqa: BLE001 - a broken cached bundle must not stop a search: the model answers
            log.warning("ONNX bundle %s of model %r cannot be used (%s); using the model itself", folder, name, exc)
            return None
        probe_text = encoder.bundle.get("probe_text")
        if not probe_text:
            return None  # nothing to check it against the store with: the model itself is checked
        self._check_dim(encoder, "now makes")
        if not self._identity_checked:
            self._check_probe(lambda: {"text": probe_text})
        return encoder

    def _check_dim(self, encoder: Encoder, verb: str) -> None:
        if encoder.dim != self.store.dim:
            raise StoreError(
                f"store {self.store.root} holds {self.store.dim}-d vectors but model {encoder.name!r} "
                f"{verb} {encoder.dim}-d ones"
            )

    @property
    def encoder(self) -> Encoder:
        """The store's model, loaded on first use."""
        return self._model.get()

    @property
    def text_encoder(self) -> Encoder:
        """What embeds text queries, loaded on first use: the ONNX text tower of the model's
        bundle when one exists for its current weights (no torch); else the model's text tower
        alone where its backend has one (Hugging Face CLIP); else :attr:`encoder`. Checked
        against the store's probe like the model itself."""
        return self._text.get()

    @property
    def has_grid(self) -> bool:
        """Whether the store's model embeds a grid of cells (what re-ranking needs), known from
        the store's header without loading the model."""
        if self._given is not None or self._model.loaded:
            from clipsearch.search import has_grid

            return has_grid(self._model.get())
        return bool(self.store.meta["grid"]) if "grid" in self.store.meta else self.store.has_cells

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "store":
            raise AttributeError(name)
        return getattr(self.store, name)

    def __len__(self) -> int:
        return len(self.store)

    def __repr__(self) -> str:
        return f"Collection({str(self.store.root)!r}, model={self.store.model_name!r}, dim={self.store.dim})"

    def add(
        self,
        paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str] | None = None,
        *,
        texts: Iterable[str] | None = None,
        on_progress: ProgressCallback | None = None,
        **options: Any,
    ) -> IndexSummary:
        """Index files and folders (images, ``.txt``, ``.md``, ``.jsonl``, ``.csv``) and/or raw ``texts``.

        Unchanged files are skipped unread; see :func:`clipsearch.ingest.index_paths` for the
        ``options`` (``batch_size``, ``workers``, ``prune``, ``both``, ``cells``, ``retry_failed``,
        ``engine="ray"`` and ``address`` to decode and embed on a Ray cluster).

        Returns:
            What happened: added, updated, unchanged, failed and removed counts, and the failures.
        """
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        summary = index_paths(
            self.store, self._model, list(paths or []), texts=list(texts or []), on_progress=on_progress, **options
        )
        if self._model.loaded and self.store.probe() is None:  # a store from before probes learns it once
            from clipsearch.models.fingerprint import probe

            with self.store.writing():
                self.store.record_probe(probe(self._model.get()))
        return summary

    def shown_path(self, path: str | None) -> str | None:
        """``path`` relative to the indexed folder it lies in, led by that folder's name
        (``photos/2023/a.jpg``), for people who should not see where the store's files are.
        A path under no indexed folder is shown by its name alone."""
        if not path:
            return path
        from clipsearch.ingest.scan import is_under
        from clipsearch.paths import display_path

        roots = [r for r in self.store.meta.get("roots") or [] if is_under(path, r)]
        if not roots:
            return display_path(os.path.basename(path))
        root = max(roots, key=len)
        return display_path(os.path.join(os.path.basename(root.rstrip(os.sep)) or root, os.path.relpath(path, root)))

    def reindex(self, *, on_progress: ProgressCallback | None = None, **options: Any) -> ReembedSummary:
        """Embed every stored item again with the store's model as it is now (its weights
        changed under the same name); see :func:`clipsearch.ingest.reembed.reembed_store` for
        ``options`` (``batch_size``, ``workers``, ``cells``). Crash-safe: a rerun continues."""
        from clipsearch.ingest.reembed import reembed_store

        encoder = self._model.get() if self._model.loaded else self._load_encoder(check=False)
        summary = reembed_store(self.store, encoder, on_progress=on_progress, **options)
        self._given, self._identity_checked = encoder, True
        self._model = LazyEncoder(self._load_encoder)
        self._text = LazyEncoder(self._load_text_encoder)
        return summary

    def remove(self, targets: Iterable[str | os.PathLike[str]] | str | os.PathLike[str]) -> int:
        """Remove items by id (or unique id prefix) or by path (a file, or every item under a folder).

        A path held by an image with several paths is detached from it; the image goes when its
        last path does. Text items go with their source file.

        Returns:
            How many items were deleted or detached from a path.

        Raises:
            StoreError: a target matches nothing.
        """
        if isinstance(targets, (str, os.PathLike)):
            targets = [targets]
        return remove_targets(self.store, targets)

    def search(self, query: Any, k: int = 10, **options: Any) -> list[Hit]:
        """The ``k`` items most similar to ``query``, best first; see
        :func:`clipsearch.search.search_store` for the query forms and ``options`` (``modality``,
        ``where``, ``path_glob``, ``min_score``, ``min_confidence``, ``exact``, ``recall``, ``rerank``,
        ``cell_weight``, ``calibrate``). Each hit has its raw ``score`` and calibrated
        ``confidence``; the list's ``no_good_match`` says whether any is a good match."""
        from clipsearch.search import as_query

        query = as_query(query)
        if any(t.kind in ("image", "pil") for t in query.terms):
            encoder: Any = self._model
        else:
            encoder = _TextQueries(self)
        return search_store(self.store, encoder, query, k=k, **options)


class _TextQueries:
    """The encoder a search without image terms gets: texts go to the collection's text
    encoder (an ONNX text tower when there is a bundle), and the full model is loaded only for
    what needs it (re-ranking an image whose cells the store did not keep). Whether the model
    has a grid comes from the store's header, so a re-ranked text search loads no model."""

    def __init__(self, collection: Collection):
        self._collection = collection
        if collection.has_grid:
            self.encode_patch_grid = self._encode_patch_grid  # what search.has_grid looks for

    @property
    def name(self) -> str:
        return self._collection.store.model_name

    @property
    def dim(self) -> int:
        return self._collection.store.dim

    def encode_texts(self, texts: Sequence[str], **options: Any) -> Any:
        return self._collection.text_encoder.encode_texts(texts, **options)

    def _encode_patch_grid(self, images: Sequence[Any], **options: Any) -> Any:
        return self._collection.encoder.encode_patch_grid(images, **options)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_collection":
            raise AttributeError(name)
        return getattr(self._collection.encoder, name)


def follow_store_guard(store: Store, encoder: Encoder) -> None:
    """An ONNX encoder runs its int8 image tower for ``store`` exactly when the int8 guard run
    on this store's images (recorded in its meta, :data:`clipsearch.ingest.embed.GUARD_KEY`)
    passed for the same bundle; with no record yet, the next indexing run decides."""
    from clipsearch.ingest.embed import GUARD_KEY

    follow = getattr(encoder, "follow_guard", None)
    record = store.meta.get(GUARD_KEY)
    if follow is None or not isinstance(record, dict):
        return
    if record.get("bundle") == encoder.info.extra.get("onnx_bundle"):
        follow((record.get("guard") or {}).get("image"))


def open_store(
    uri: str | os.PathLike[str] | None = None,
    *,
    model: str | Encoder | None = None,
    weights: str | None = None,
    create: bool = True,
    ann_threshold: int | None = None,
    sources: Sequence[str | os.PathLike[str]] = (),
    storage_options: dict[str, str] | None = None,
    backend: str | None = None,
) -> Collection:
    """Open (or create) the store at ``uri`` with its model; the one entry point.

    Args:
        uri: a folder, a ``file://`` URI, ``s3://bucket/prefix``, or None for
            :func:`~clipsearch.store.default_store_path`.
        model: the model name (or a loaded :class:`~clipsearch.models.base.Encoder`). An
            existing store refuses any model but its own; a new store records it. None: the
            store's model, or :func:`default_model` for a new store.
        weights: local checkpoint for ``open_clip:ARCH`` models; recorded in a new store.
        create: create the store when missing; False raises instead.
        ann_threshold: rows at which an ANN index is used; default ``$CLIPSEARCH_ANN_THRESHOLD``
            or :data:`~clipsearch.store.ann.DEFAULT_ANN_THRESHOLD`.
        sources: what a new store will index first, for :func:`default_model` (text alone:
            a sentence encoder).
        storage_options: for ``s3://``: credentials and endpoint (Lance's keys, e.g.
            ``aws_endpoint``, ``aws_access_key_id``), over the usual AWS environment variables.
        backend: "torch", "onnx" or "auto" (see :func:`clipsearch.models.registry.load_model`);
            None: :func:`~clipsearch.models.registry.default_backend` (``$CLIPSEARCH_BACKEND``,
            else auto). Vectors from either backend are comparable: a store may mix them.

    Raises:
        StoreError: another model, a newer schema version, a folder that is not a store, or
            no store and ``create=False``.
    """
    from clipsearch.models.registry import check_backend, default_backend

    backend = check_backend(backend) if backend is not None else default_backend()
    name = model if (model is None or isinstance(model, str)) else model.name
    encoder = None if (model is None or isinstance(model, str)) else model
    root = resolve_store_uri(uri, storage_options)
    if Store.exists(root):
        return Collection(Store.open(root, model=name, ann_threshold=ann_threshold), encoder, backend=backend)
    if not create:
        raise StoreError(f"no store at {root}; build one with: clipsearch index PATH --store {root}")
    from clipsearch.store.lance_store import check_can_create

    check_can_create(root)  # before loading a model
    if encoder is None and name is None:
        choice = default_model(sources)
        log.info("new store %s: model %s (%s)", root, choice.name, choice.why)
        name, encoder = choice.name, choice.encoder
        if encoder is not None and backend != "torch":
            encoder = None  # chosen on torch; loaded again below with the backend asked for
    if encoder is None:
        from clipsearch.models.registry import load_model

        encoder = load_model(name, weights=weights, backend=backend)
    from clipsearch.models.base import embeds_grid
    from clipsearch.models.fingerprint import probe

    record = ModelRecord(encoder.name, encoder.dim, tuple(encoder.modalities), weights, grid=embeds_grid(encoder))
    store = Store.create(root, record, ann_threshold=ann_threshold)
    with store.writing():
        store.record_probe(probe(encoder))
    return Collection(store, encoder, identity_checked=True, backend=backend)

