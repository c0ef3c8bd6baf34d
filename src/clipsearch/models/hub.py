"""The local Hugging Face hub cache: where a hub id's snapshot is, without the network.

Nothing is ever downloaded: there is no network here, and transformers' own download retries
for ~40 s. Every backend that takes a hub id (the registry, open_clip's ``hf-hub:`` names, a dual
encoder's text tower, the reader and the re-ranker) finds it here.
"""

from __future__ import annotations

from pathlib import Path

from clipsearch.errors import ModelNotAvailable

OFFLINE_OPTIONS = "use a local model folder, 'minilm' (text only) or 'demo'"


def offline_message(name: str) -> str:
    """The one-sentence error for a model whose weights are not on this machine."""
    return f"model {name!r} is not available offline: downloads are unavailable here, so {OFFLINE_OPTIONS}"


def cached_hub_folder(repo_id: str, *, name: str) -> Path:
    """The local snapshot folder of a hub repo, from the HF cache only (no network, fails fast).

    Args:
        repo_id: ``"ORG/NAME"``.
        name: the model name the caller was asked for, for the error message.

    Raises:
        ModelNotAvailable: the repo is not in the local cache.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError) as e:
        raise ModelNotAvailable(offline_message(name)) from e


def looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a path (``./m``, ``/m``, ``~/m``, ``a/b/c``), not a hub id ``ORG/NAME``."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def local_source(name: str, what: str) -> str:
    """``name`` as a folder when it is one; a path-like name that does not exist is an error
    (rather than a confusing "not in the Hugging Face cache"); anything else is a hub id.

    Args:
        name: a folder or a hub id.
        what: the kind of model, for the error message ("reader", "rerank").

    Raises:
        ModelNotAvailable: ``name`` is a file, or a path that does not exist.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ModelNotAvailable(
            f"{what} model {name!r} is a file; give a folder saved with save_pretrained, or a hub id"
        )
    if looks_like_path(name):
        raise ModelNotAvailable(f"{what} model folder {name!r} does not exist")
    return name
