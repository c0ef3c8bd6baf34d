"""Models from the Hugging Face Hub: downloaded on first use into the standard cache, then offline.

Every backend that takes a hub id (the registry's HF CLIP and sentence-transformers names,
open_clip's ``hf-hub:`` names, a dual encoder's text tower, DPR, the reader and the re-ranker)
finds its folder through :func:`hub_folder`: the local Hugging Face cache first, with no network;
else a download of the files a model needs (configs, tokenizer, safetensors weights) into that
cache, with the hub's own progress bar, after which every run loads it offline. ``HF_HUB_OFFLINE=1``,
or a Hub that cannot be reached, is one sentence that says what to do, within seconds: the
download is ours (``snapshot_download``), and the model is then loaded from the local folder,
so transformers' own retries never start.

A download is announced on the ``clipsearch`` logger (the CLI shows it on stderr).
"""

from __future__ import annotations

import logging
from pathlib import Path

from clipsearch.errors import ModelNotAvailable

log = logging.getLogger("clipsearch")

OFFLINE_OPTIONS = "use a local model folder, 'minilm' (text only) or 'demo'"
MODEL_FILES = ["*.json", "*.txt", "*.model", "*.safetensors", "*.tiktoken", "*.py"]
"""What a download fetches: configs, tokenizers and safetensors weights (never a repository's
TensorFlow, Flax or ONNX copies). A repository without safetensors gets its PyTorch ``.bin``."""
LEGACY_WEIGHTS = ["*.bin"]


def offline_message(name: str, repo_id: str | None = None) -> str:
    """The one-sentence error for a hub model that is not in the cache while downloads are off."""
    return (
        f"model {name!r} is not in the local Hugging Face cache and downloads are off (HF_HUB_OFFLINE=1): "
        f"copy it with `hf download {repo_id or _repo_of(name)}` on a machine with internet, or {OFFLINE_OPTIONS}"
    )


def unreachable_message(name: str, why: str, repo_id: str | None = None) -> str:
    """The one-sentence error for a hub model that is not cached when the Hub cannot be reached."""
    return (
        f"model {name!r} is not in the local Hugging Face cache and the Hugging Face Hub cannot be reached ({why}): "
        f"check the connection, copy it with `hf download {repo_id or _repo_of(name)}` on a machine with internet, "
        f"or {OFFLINE_OPTIONS}"
    )


def _repo_of(name: str) -> str:
    for prefix in ("open_clip:hf-hub:", "hf-hub:"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def downloads_off() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids downloads (read as huggingface_hub reads it)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_folder(repo_id: str, *, name: str) -> Path:
    """The local snapshot folder of a hub repository: cached, or downloaded now (first use).

    Args:
        repo_id: ``"ORG/NAME"``.
        name: the model name the caller was asked for, for messages.

    Raises:
        ModelNotAvailable: not cached and downloads are off, the Hub cannot be reached, or the
            Hub has no such repository.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError):
        pass
    except ValueError as e:  # a malformed id
        raise ModelNotAvailable(f"model {name!r}: {repo_id!r} is not a Hugging Face Hub id ({_first_line(e)})") from e
    if downloads_off():
        raise ModelNotAvailable(offline_message(name, repo_id))
    try:  # ask first, so that a Hub out of reach is one sentence, not an announced download
        HfApi().repo_info(repo_id)
        log.info("downloading model %s from the Hugging Face Hub (first use; later runs use the local copy)", repo_id)
        folder = Path(snapshot_download(repo_id, allow_patterns=MODEL_FILES))
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("*/*.safetensors")):
            folder = Path(snapshot_download(repo_id, allow_patterns=MODEL_FILES + LEGACY_WEIGHTS))
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as e:
        raise ModelNotAvailable(
            f"model {name!r}: the Hugging Face Hub has no model {repo_id!r} that can be downloaded "
            f"({_first_line(e)}); check the id, or {OFFLINE_OPTIONS}"
        ) from e
    except Exception as e:  # noqa: BLE001 - no route, refused, timed out, a broken proxy: httpx, OSError and the hub's own
        raise ModelNotAvailable(unreachable_message(name, _why(e), repo_id)) from e
    return folder


def looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a path (``./m``, ``/m``, ``~/m``, ``a/b/c``), not a hub id ``ORG/NAME``."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def local_source(name: str, what: str) -> str:
    """A local folder for ``name``: the folder it names, or the snapshot of the hub id it is
    (downloaded on first use, :func:`hub_folder`). A path-like name that does not exist is an
    error (rather than a confusing "not on the Hub").

    Args:
        name: a folder or a hub id.
        what: the kind of model, for the error message ("reader", "rerank").

    Raises:
        ModelNotAvailable: ``name`` is a file, a path that does not exist, or a hub id that
            cannot be had (see :func:`hub_folder`).
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
    return str(hub_folder(name, name=name))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def _why(e: BaseException) -> str:
    cause = e.__cause__ or e.__context__
    if cause is not None and str(cause).strip():
        return _first_line(cause)
    return _first_line(e)
