"""open_clip models as an :class:`Encoder`.

Names: ``open_clip:ARCH/PRETRAINED`` (a pretrained tag whose weights are already in the local
cache; nothing is downloaded), ``open_clip:ARCH`` with ``weights=FILE`` (a local checkpoint,
safetensors or a torch file loaded with ``weights_only=True``), ``open_clip:hf-hub:ORG/REPO``
(a cached hub snapshot) and a folder holding ``open_clip_config.json`` (open_clip's
``local-dir:`` layout).

Images: our :func:`~clipsearch.models.preprocess.to_pixel_values` with the model's own
``visual.preprocess_cfg`` reproduces open_clip's torchvision transform on PIL images exactly,
provided the centre crop rounds its offset as torchvision does (``crop_rounding="round"``).

Texts: open_clip's tokenizer always pads to the full context (77). For CLIP text towers with
a causal mask that pool at the end-of-text token, we cut each batch after its last EOS before
the transformer; open_clip's ``CLIP.encode_text`` adds the full 77-row positional embedding and
the full 77x77 mask, so it cannot take shorter input, and we run the same layers with both
sliced to the batch length. Positions up to each EOS see the same inputs under a causal mask,
so the result is the same (checked in tests at 1e-5). Other towers get the full-length tokens.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from clipsearch.errors import ModelNotAvailable
from clipsearch.models.base import Encoder, ModelInfo, Preprocess, TextRole
from clipsearch.models.hub import hub_folder, offline_message

PREFIX = "open_clip:"
CROP_ROUNDING = "round"  # torchvision's CenterCrop, which open_clip's transform uses


class OpenClipEncoder(Encoder):
    """A loaded open_clip model with its tokenizer and preprocessing."""

    def __init__(self, model: Any, tokenizer: Any, info: ModelInfo, device: str = "cpu"):
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.device = device
        self.pool_type = _trimmable_pool_type(model)

    @property
    def trims_text(self) -> bool:
        """Whether text batches are cut to their longest member (False: full context)."""
        return self.pool_type is not None

    # -- images ------------------------------------------------------------------------------
    def _encode_pixels(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.device)
            return self.model.encode_image(x).float().cpu().numpy()

    # -- texts -------------------------------------------------------------------------------
    def _encode_text_batch(self, texts: list[str], role: TextRole) -> npt.NDArray:
        import torch

        tokens = self.tokenizer(texts).to(self.device)
        with torch.inference_mode():
            if self.pool_type is None:
                out = self.model.encode_text(tokens)
            else:
                out = self.encode_tokens_trimmed(tokens)
            return out.float().cpu().numpy()

    def trim(self, tokens: Any) -> Any:
        """``tokens`` ``(n, context)`` cut after the batch's last pooled (EOS) position: ``(n, L)``."""
        if self.pool_type == "argmax":
            idx = tokens.argmax(dim=-1)
        else:
            idx = (tokens == self.model.text_eos_id).int().argmax(dim=-1)
        return tokens[:, : int(idx.max()) + 1]

    def encode_tokens_trimmed(self, tokens: Any) -> Any:
        """``CLIP.encode_text`` on ``tokens`` cut to the batch length; ``(n, embed_dim)``, unnormalised."""
        from open_clip.transformer import text_global_pool

        m = self.model
        text = self.trim(tokens)
        seq_len = text.shape[1]
        cast_dtype = m.transformer.get_cast_dtype()
        x = m.token_embedding(text).to(cast_dtype)
        x = x + m.positional_embedding[:seq_len].to(cast_dtype)
        x = m.transformer(x, attn_mask=m.attn_mask[:seq_len, :seq_len])
        x = m.ln_final(x)
        x = text_global_pool(x, text, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        if m.text_projection is not None:
            if hasattr(m.text_projection, "weight"):  # nn.Linear
                x = m.text_projection(x)
            else:
                x = x @ m.text_projection
        return x

    def count_truncated(self, texts: Sequence[str]) -> int:
        # Tokenise one slot longer than the context: a text that fills that slot was cut.
        ctx = self.info.context_length
        tokens = self.tokenizer(list(texts), context_length=ctx + 1)
        return int((tokens[:, ctx] != self._pad_id()).sum().item())

    def _pad_id(self) -> int:
        hf = getattr(self.tokenizer, "tokenizer", None)  # open_clip.tokenizer.HFTokenizer
        if hf is not None and getattr(hf, "pad_token_id", None) is not None:
            return int(hf.pad_token_id)
        return 0  # SimpleTokenizer pads with 0


def _trimmable_pool_type(model: Any) -> str | None:
    """The pool type if cutting trailing padding cannot change this model's text vectors, else None."""
    try:
        from open_clip.model import CLIP
    except ImportError:  # pragma: no cover - open_clip is a dependency
        return None
    if type(model).encode_text is not CLIP.encode_text:  # CustomTextCLIP, CoCa, subclasses
        return None
    if getattr(model, "attn_mask", None) is None:  # no causal mask: padding is attended to
        return None
    pool = getattr(model, "text_pool_type", None)
    if pool == "eos" and getattr(model, "text_eos_id", None) is None:
        return None
    return pool if pool in ("argmax", "eos") else None


# -- loading ---------------------------------------------------------------------------------
def load_open_clip(name: str, *, weights: str | None = None, device: str = "cpu") -> OpenClipEncoder:
    """Load ``open_clip:ARCH/PRETRAINED``, ``open_clip:ARCH`` + ``weights`` or ``open_clip:hf-hub:REPO``.

    Args:
        name: the full name, starting with ``open_clip:``.
        weights: a local checkpoint file, for ``open_clip:ARCH`` names only.
        device: torch device for inference.

    Raises:
        ModelNotAvailable: malformed name, unknown architecture or tag, weights not cached,
            unreadable or unsafe checkpoint.
    """
    spec = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    usage = "use 'open_clip:ARCH/PRETRAINED' (e.g. 'open_clip:ViT-B-32/openai') or 'open_clip:ARCH' with weights=FILE"
    if spec.startswith("hf-hub:"):
        if weights:
            raise ModelNotAvailable(f"open_clip model {name!r} takes its weights from the hub repo, not weights=FILE")
        folder = hub_folder(spec[len("hf-hub:") :], name=name)
        return load_open_clip_dir(folder, name=name, device=device)
    if not spec or spec.count("/") > 1 or spec.startswith("/") or spec.endswith("/"):
        raise ModelNotAvailable(f"malformed open_clip model name {name!r}: {usage}")
    arch, _, tag = spec.partition("/")
    import open_clip

    known = open_clip.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=3)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else "see open_clip.list_models()"
        raise ModelNotAvailable(f"unknown open_clip architecture {arch!r} in {name!r}: {hint}")

    force_quick_gelu = False
    force_pp: dict[str, Any] = {}
    extra: dict[str, Any] = {"arch": arch}
    if tag:
        if weights:
            raise ModelNotAvailable(f"open_clip model {name!r} names a pretrained tag; give a tag or weights=FILE, not both")
        cfg = open_clip.get_pretrained_cfg(arch, tag)
        if not cfg:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            raise ModelNotAvailable(
                f"unknown pretrained tag {tag!r} for open_clip architecture {arch!r}; known tags: {', '.join(tags) or 'none'}"
            )
        checkpoint = _cached_pretrained_file(cfg) or _download_pretrained(cfg, name)
        # What create_model(arch, pretrained=tag) would take from the tag, without its download:
        force_pp = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode", "fill_color") if k in cfg}
        # The tag says how the weights were trained; open_clip only warns on a mismatch, which
        # would give wrong vectors (e.g. ViT-B-32/openai needs QuickGELU).
        model_cfg = open_clip.get_model_config(arch) or {}
        force_quick_gelu = bool(cfg.get("quick_gelu", False)) and not model_cfg.get("quick_gelu", False)
        extra.update(pretrained=tag, checkpoint=checkpoint, quick_gelu=bool(cfg.get("quick_gelu", False)))
    elif weights:
        checkpoint = str(Path(weights).expanduser())
        if not Path(checkpoint).is_file():
            raise ModelNotAvailable(f"weights file {weights!r} for {name!r} does not exist")
        extra.update(weights=checkpoint)
    else:
        raise ModelNotAvailable(f"open_clip model {name!r} names no weights: {usage}")

    model = _create(
        name,
        checkpoint,
        lambda: open_clip.create_model(
            arch,
            pretrained=checkpoint,
            device=device,
            force_quick_gelu=force_quick_gelu,
            force_preprocess_cfg=force_pp or None,
            weights_only=True,
        ),
    )
    tokenizer = open_clip.get_tokenizer(arch)
    return _wrap(model, tokenizer, name=name, device=device, extra=extra)


def load_open_clip_dir(folder: str | Path, *, name: str, device: str = "cpu") -> OpenClipEncoder:
    """Load a folder with ``open_clip_config.json`` and a checkpoint (open_clip's ``local-dir:``)."""
    import open_clip

    folder = Path(folder)
    ident = f"local-dir:{folder}"
    model = _create(name, str(folder), lambda: open_clip.create_model(ident, device=device, weights_only=True))
    tokenizer = open_clip.get_tokenizer(ident)
    return _wrap(model, tokenizer, name=name, device=device, extra={"path": str(folder)})


def _create(name: str, checkpoint: str, make: Any) -> Any:
    import pickle

    try:
        model = make()
    except pickle.UnpicklingError as e:
        raise ModelNotAvailable(
            f"weights file {checkpoint!r} for {name!r} cannot be loaded safely (it needs unpickling): use safetensors"
        ) from e
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelNotAvailable(f"cannot load open_clip model {name!r} from {checkpoint!r}: {first}") from e
    return model.eval()


def _wrap(model: Any, tokenizer: Any, *, name: str, device: str, extra: dict[str, Any]) -> OpenClipEncoder:
    probe = tokenizer(["a"])  # (1, context_length) token ids
    context_length = int(probe.shape[1])
    preprocess = preprocess_from_open_clip(getattr(model.visual, "preprocess_cfg", {}) or {}, name=name)
    embed_dim = getattr(model, "embed_dim", None) or _probe_dim(model, probe.to(device))
    logit_bias = getattr(model, "logit_bias", None)
    if logit_bias is not None:
        extra["logit_bias"] = float(logit_bias.detach().flatten()[0].item())
    extra["crop_rounding"] = CROP_ROUNDING
    info = ModelInfo(
        name=name,
        backend="open_clip",
        dim=int(embed_dim),
        modalities=("image", "text"),
        context_length=context_length,
        preprocess=preprocess,
        logit_scale=float(model.logit_scale.detach().exp().flatten()[0].item()),
        extra=extra,
    )
    return OpenClipEncoder(model, tokenizer, info, device)


def _probe_dim(model: Any, tokens: Any) -> int:
    import torch

    with torch.inference_mode():
        return int(model.encode_text(tokens).shape[-1])


def preprocess_from_open_clip(cfg: dict[str, Any], *, name: str) -> Preprocess:
    """Our :class:`Preprocess` from open_clip's ``visual.preprocess_cfg`` dict.

    Raises:
        ModelNotAvailable: a non-square input size or the "longest" resize mode.
    """
    size = cfg.get("size", 224)
    if isinstance(size, (tuple, list)):
        if len(size) != 2 or size[0] != size[1]:
            raise ModelNotAvailable(f"model {name!r} takes non-square {tuple(size)} images, which clipsearch does not support")
        size = size[0]
    resize_mode = cfg.get("resize_mode", "shortest") or "shortest"
    if resize_mode not in ("shortest", "squash"):
        raise ModelNotAvailable(f"model {name!r} uses open_clip resize_mode {resize_mode!r}, which clipsearch does not support")
    interpolation = cfg.get("interpolation", "bicubic") or "bicubic"
    # open_clip maps anything but "bilinear" ("bicubic", "random") to bicubic at inference.
    interpolation = "bilinear" if interpolation == "bilinear" else "bicubic"
    mean = tuple(float(v) for v in _three(cfg.get("mean", Preprocess.mean)))
    std = tuple(float(v) for v in _three(cfg.get("std", Preprocess.std)))
    kwargs: dict[str, Any] = dict(
        size=int(size), crop=int(size), mean=mean, std=std, interpolation=interpolation, resize_mode=resize_mode
    )
    return Preprocess(**kwargs, crop_rounding=CROP_ROUNDING)


def _three(v: Any) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


def _download_pretrained(cfg: dict[str, Any], name: str) -> str:
    """A pretrained tag's weights, downloaded now by open_clip (first use) into its usual cache.

    Raises:
        ModelNotAvailable: downloads are off, or the weights cannot be fetched.
    """
    import logging

    import open_clip

    from clipsearch.models.hub import downloads_off, unreachable_message

    if downloads_off():
        raise ModelNotAvailable(offline_message(name))
    logging.getLogger("clipsearch").info("downloading the weights of %s (first use; later runs use the local copy)", name)
    try:
        path = open_clip.download_pretrained(cfg)
    except Exception as e:  # noqa: BLE001 - huggingface_hub, urllib and httpx each raise their own
        raise ModelNotAvailable(unreachable_message(name, str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__)) from e
    if not path or not os.path.isfile(path):
        raise ModelNotAvailable(unreachable_message(name, "nothing was downloaded"))
    return path


def _cached_pretrained_file(cfg: dict[str, Any]) -> str | None:
    """The local path of a pretrained tag's weights if already cached, else None (never downloads).

    Looks where open_clip's own download would put them: the HF hub cache (safetensors first)
    and ``~/.cache/clip`` for URL downloads.
    """
    if cfg.get("file"):
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = []
        if filename == "open_clip_pytorch_model.bin":
            candidates.append("open_clip_model.safetensors")
        elif filename.endswith((".bin", ".pth")):
            candidates.append(filename[:-4] + ".safetensors")
        candidates.append(filename)
        for fn in candidates:
            found = try_to_load_from_cache(repo_id, fn)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = cfg.get("url", "")
    if url:
        path = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(path):
            return path
    return None
