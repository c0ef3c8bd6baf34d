"""Exporting a torch encoder's towers to an ONNX bundle (see :mod:`clipsearch.models.onnx_runtime`).

:func:`export_bundle` writes, for HF CLIP, open_clip and our own dual encoders (the demo model
included): the image tower ``pixel_values (n, 3, crop, crop) -> embeds (n, dim)`` (plus
``cells (n, gh, gw, dim)`` for a model with a grid), the text tower ``input_ids, attention_mask
(n, L) -> embeds (n, dim)`` with a dynamic ``L``, their dynamic-int8 copies, and a
``tokenizer.json`` that gives exactly the torch backend's token ids (checked on a few hundred
strings before the bundle is kept). fp32 graphs are checked against torch (cosine >=
:data:`FP32_MIN_COSINE`); a bundle that misses it is not written.

The exporter is torch's TorchScript-based one (``dynamo=False``): it needs no ``onnxscript``
and handles dynamic batch and sequence axes of these models reliably, where the torch.export
one would trace the HF and open_clip text masks into fixed shapes.

sentence-transformers text models export too (text tower only) when their pipeline is a plain
transformer, pooling, dense and normalisation with no prompts; DPR models stay on torch
(:func:`exportable` says no).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from clipsearch.events import ProgressCallback, Reporter
from clipsearch.models.fingerprint import PROBE_TEXTS
from clipsearch.models.onnx_runtime import (
    BUNDLE_FILE,
    BUNDLE_FORMAT,
    bundle_dir,
    cache_root,
    file_lock,
    guard_result,
    open_bundle,
    write_model_record,
)

if TYPE_CHECKING:
    from clipsearch.models.base import Encoder

log = logging.getLogger("clipsearch")

FP32_MIN_COSINE = 0.9999
"""An exported fp32 graph must give every check input at least this cosine to torch."""
OPSET = 17
EXPORTABLE_BACKENDS = ("hf_clip", "open_clip", "dual", "sentence_transformers")
SBERT_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")
"""sentence-transformers pipelines made of these modules export (all-MiniLM-L6-v2 is one)."""

TEXT_CALIBRATION = (
    "a photo of a cat",
    "a dog playing in the snow",
    "sunset over the mountains",
    "a red car parked on a street at night",
    "two people shaking hands in an office",
    "a bowl of fruit on a wooden table",
    "a small blue circle above a large yellow star",
    "a green triangle to the left of a purple heart",
    "the Eiffel Tower in Paris",
    "an aerial view of a city",
    "close-up of a flower with a bee",
    "handwritten notes on lined paper",
    "a screenshot of a spreadsheet",
    "diagram of a neural network",
    "a crowded beach in summer",
    "a cup of coffee and a croissant",
    "an old black and white photograph of a family",
    "children playing football in a park",
    "a cozy living room with a fireplace",
    "a plate of sushi",
    "snow-covered pine trees",
    "a bicycle leaning against a brick wall",
    "the night sky full of stars",
    "a kitten sleeping on a laptop keyboard",
    "receipt from a grocery store",
    "a wedding ceremony outdoors",
    "mountain lake reflecting the clouds",
    "a person running on a treadmill",
    "x",
    "2024 annual report, page 3: revenue by region",
    "¿Dónde está la biblioteca? Ça va très bien, merci!",
    "an extremely long description " + "of many many things " * 20,
)
"""Texts the text tower's int8 guard compares (with :data:`PROBE_TEXTS`): short and long,
everyday and odd, as queries are."""


def exportable(encoder: Any) -> bool:
    """Whether :func:`export_bundle` can export this encoder (its backend is one it knows)."""
    info = getattr(encoder, "info", None)
    if info is None or info.backend not in EXPORTABLE_BACKENDS:
        return False
    if info.backend == "open_clip" and getattr(encoder, "pool_type", None) is None:
        return False  # a text tower that needs the full padded context (no causal mask): torch only
    if info.backend == "sentence_transformers":
        if info.extra.get("prompts"):  # queries and passages get other prefixes: not one graph
            return False
        return all(type(m).__name__ in SBERT_MODULES for m in encoder.model)  # type: ignore[attr-defined]
    return True


# -- what makes a model ----------------------------------------------------------------------
def model_files(encoder: Encoder) -> dict[str, Path]:
    """The files that decide what ``encoder`` computes (weights, configs, tokenizer), by label.

    Raises:
        ValueError: a backend this module does not export, or files it cannot find.
    """
    info = encoder.info
    extra = info.extra
    files: dict[str, Path] = {}

    def add_folder(label: str, folder: Path) -> None:
        for p in sorted(Path(folder).rglob("*")):
            rel = p.relative_to(folder)
            if p.is_file() and not any(part.startswith(".") for part in rel.parts):
                files[f"{label}/{rel.as_posix()}"] = p.resolve()

    if info.backend == "hf_clip":
        add_folder("hf", Path(extra["path"]))
    elif info.backend == "open_clip":
        if extra.get("path"):
            add_folder("open_clip", Path(extra["path"]))
        else:
            ckpt = extra.get("checkpoint") or extra.get("weights")
            if not ckpt:
                raise ValueError(f"open_clip model {info.name!r} records no checkpoint file")
            files["open_clip/checkpoint"] = Path(ckpt).resolve()
    elif info.backend == "dual":
        model = encoder.model  # type: ignore[attr-defined]
        if extra.get("path"):
            add_folder("dual", Path(extra["path"]))
        add_folder("text_tower", Path(model.text_path))
    elif info.backend == "sentence_transformers":
        add_folder("sbert", Path(extra["path"]))
    else:
        raise ValueError(f"model {info.name!r} (backend {info.backend!r}) has no ONNX export")
    if not files:
        raise ValueError(f"model {info.name!r}: no model files found to key its ONNX bundle")
    return files


def _identity(encoder: Encoder) -> dict[str, Any]:
    """What the key covers beside the files: the model's reported settings (preprocessing,
    context length, dim) and, for open_clip, the architecture and tag."""
    info = encoder.info.to_dict()
    extra = {k: v for k, v in info["extra"].items() if k in ("arch", "pretrained", "quick_gelu", "kind", "grid")}
    return {k: info[k] for k in ("backend", "dim", "context_length", "preprocess")} | {"extra": extra}


# -- torch wrappers: one forward per tower ------------------------------------------------------
def _tower_modules(encoder: Encoder) -> tuple[Any, Any, bool]:
    """``(image_module, text_module, has_cells)``: torch modules with the graphs' signatures."""
    import torch

    backend = encoder.info.backend
    model = encoder.model  # type: ignore[attr-defined]

    if backend == "hf_clip":
        from clipsearch.models.hf_clip import _features

        class Image(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.m = model

            def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
                return _features(self.m.get_image_features(pixel_values=pixel_values))

        class Text(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.m = model

            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
                return _features(self.m.get_text_features(input_ids=input_ids, attention_mask=attention_mask))

        return Image(), Text(), False

    if backend == "open_clip":

        class Image(torch.nn.Module):  # type: ignore[no-redef]
            def __init__(self) -> None:
                super().__init__()
                self.m = model

            def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
                return self.m.encode_image(pixel_values)

        class Text(torch.nn.Module):  # type: ignore[no-redef]
            """open_clip's ``encode_text`` on tokens padded to the batch's longest text (as
            :meth:`OpenClipEncoder.encode_tokens_trimmed`): the causal mask keeps padding after
            the end-of-text token from reaching the pooled position."""

            def __init__(self) -> None:
                super().__init__()
                self.m = model

            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
                from open_clip.transformer import text_global_pool

                m = self.m
                seq_len = input_ids.shape[1]
                cast_dtype = m.transformer.get_cast_dtype()
                x = m.token_embedding(input_ids).to(cast_dtype)
                x = x + m.positional_embedding[:seq_len].to(cast_dtype)
                x = m.transformer(x, attn_mask=m.attn_mask[:seq_len, :seq_len])
                # Zero the padding (never pooled): keeps attention_mask a graph input, as the bundle promises.
                x = m.ln_final(x) * attention_mask.unsqueeze(-1).to(x.dtype)
                x = text_global_pool(x, input_ids, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
                if m.text_projection is not None:
                    x = m.text_projection(x) if hasattr(m.text_projection, "weight") else x @ m.text_projection
                return x

        return Image(), Text(), False

    if backend == "dual":

        class Image(torch.nn.Module):  # type: ignore[no-redef]
            def __init__(self) -> None:
                super().__init__()
                self.m = model

            def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                pooled, cells = self.m.image(pixel_values)
                return pooled, cells.permute(0, 2, 3, 1)

        class Text(torch.nn.Module):  # type: ignore[no-redef]
            def __init__(self) -> None:
                super().__init__()
                self.m = model

            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
                ids = {"input_ids": input_ids, "attention_mask": attention_mask}
                return self.m.text_head(self.m.tower_states(ids), attention_mask.bool())

        return Image(), Text(), True

    if backend == "sentence_transformers":

        class Text(torch.nn.Module):  # type: ignore[no-redef]
            """The pipeline up to its embedding, without the final normalisation (the graph's
            ``embeds`` are not normalised; the encoder normalises)."""

            def __init__(self) -> None:
                super().__init__()
                self.steps = torch.nn.ModuleList([m for m in model if type(m).__name__ != "Normalize"])

            def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
                features = {"input_ids": input_ids, "attention_mask": attention_mask}
                for step in self.steps:
                    features = step(features)
                return features["sentence_embedding"]

        return None, Text(), False

    raise ValueError(f"model {encoder.name!r} (backend {backend!r}) has no ONNX export")


# -- tokenizer ---------------------------------------------------------------------------------
def build_tokenizer(encoder: Encoder) -> Any:
    """A ``tokenizers.Tokenizer`` that gives the torch backend's ids: it truncates to the context
    length (the end-of-text token kept last) and pads to the longest text with the model's pad id."""
    from tokenizers import Tokenizer

    backend = encoder.info.backend
    ctx = encoder.info.context_length
    if backend == "hf_clip":
        hf = encoder.tokenizer  # type: ignore[attr-defined]
    elif backend in ("dual", "sentence_transformers"):
        hf = encoder.model.tokenizer  # type: ignore[attr-defined]
    elif backend == "open_clip":
        return _open_clip_tokenizer(encoder.tokenizer, ctx)  # type: ignore[attr-defined]
    else:
        raise ValueError(f"model {encoder.name!r} (backend {backend!r}) has no ONNX export")
    tok = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    tok.enable_truncation(max_length=ctx)
    tok.enable_padding(pad_id=int(hf.pad_token_id), pad_token=str(hf.pad_token))
    return tok


def _open_clip_tokenizer(oc_tok: Any, ctx: int) -> Any:
    """open_clip's tokenizer as a ``tokenizers`` file.

    Its own ``SimpleTokenizer`` is CLIP's byte-level BPE written in Python; transformers'
    ``CLIPTokenizer`` builds the same BPE (same normaliser, split pattern and end-of-word
    suffix) as a ``tokenizers`` pipeline from the vocabulary and merges, so we build one from
    open_clip's own tables rather than re-implement it. Hub models carry an HF tokenizer.
    """
    from tokenizers import Tokenizer

    inner = getattr(oc_tok, "tokenizer", None)
    if inner is not None and hasattr(inner, "backend_tokenizer"):  # open_clip HFTokenizer
        tok = Tokenizer.from_str(inner.backend_tokenizer.to_str())
        pad_id = inner.pad_token_id if inner.pad_token_id is not None else 0
        tok.enable_truncation(max_length=ctx)
        tok.enable_padding(pad_id=int(pad_id), pad_token=inner.convert_ids_to_tokens(int(pad_id)))
        return tok
    from transformers import CLIPTokenizer

    encoder_vocab: dict[str, int] = oc_tok.encoder
    merges = sorted(oc_tok.bpe_ranks.items(), key=lambda kv: kv[1])
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab_file.write_text(json.dumps(encoder_vocab), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for (a, b), _ in merges) + "\n", encoding="utf-8")
        sot, eot = oc_tok.decoder[oc_tok.sot_token_id], oc_tok.decoder[oc_tok.eot_token_id]
        hf = CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file), bos_token=sot, eos_token=eot, unk_token=eot, pad_token=eot)
        tok = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    tok.enable_truncation(max_length=ctx)
    tok.enable_padding(pad_id=0, pad_token=oc_tok.decoder[0])  # SimpleTokenizer pads with id 0
    return tok


def tokenizer_check_texts() -> list[str]:
    """A few hundred varied strings (short, long past any context, punctuation, digits, accents,
    emoji, odd spacing) on which an exported tokenizer must give the torch backend's ids."""
    rng = np.random.default_rng(0)
    words = (
        "a the photo of dog cat running snow field red blue circle square star tax report quarterly Paris "
        "naïve café über 東京 🐶 don't it's U.S.A. 3.14 #hashtag @user e-mail x-ray C++ (parenthesis) "
        "'quoted' \"double\" semi;colon co:lon ellipsis... !!! ??? hyphen-ated under_score CamelCase"
    ).split()
    texts = list(PROBE_TEXTS) + list(TEXT_CALIBRATION)
    for _ in range(260):
        n = int(rng.integers(1, 12 if rng.random() < 0.8 else 120))
        sep = " " if rng.random() < 0.9 else "  \t"
        texts.append(sep.join(rng.choice(words, n)))
    texts += ["A   B", "  leading and trailing  ", "UPPER CASE TEXT", "word " * 200, "é" * 300]
    return texts


def torch_token_ids(encoder: Encoder, texts: Sequence[str]) -> list[list[int]]:
    """The ids the torch backend feeds its text tower for each text, padding removed."""
    backend = encoder.info.backend
    out: list[list[int]] = []
    if backend == "open_clip":
        for t in texts:
            tokens = encoder.tokenizer([t])  # type: ignore[attr-defined]
            if getattr(encoder, "trims_text", False):
                tokens = encoder.trim(tokens)  # type: ignore[attr-defined]
            out.append([int(i) for i in tokens[0].tolist()])
        return out
    for t in texts:
        if backend == "hf_clip":
            batch = encoder.tokenize([t])  # type: ignore[attr-defined]
        elif backend == "sentence_transformers":
            model = encoder.model  # type: ignore[attr-defined]
            batch = (model.preprocess if hasattr(model, "preprocess") else model.tokenize)([t])
        else:
            batch = encoder.model.tokenize([t])  # type: ignore[attr-defined]
        out.append([int(i) for i in batch["input_ids"][0].tolist()])
    return out


def check_tokenizer(encoder: Encoder, tokenizer: Any, texts: Sequence[str] | None = None) -> list[str]:
    """The texts on which ``tokenizer`` gives other ids than the torch backend (empty: all agree)."""
    texts = list(texts or tokenizer_check_texts())
    want = torch_token_ids(encoder, texts)
    got = [e.ids[: sum(e.attention_mask)] for e in tokenizer.encode_batch(texts)]  # padding off
    return [t for t, w, g in zip(texts, want, got) if list(w) != list(g)]


# -- the export --------------------------------------------------------------------------------
def export_bundle(
    encoder: Encoder,
    *,
    calibration: npt.NDArray[np.float32] | None = None,
    calibration_source: str = "calibration sample",
    weights: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> Path:
    """Export both towers of ``encoder`` (once per weights) and return the bundle folder.

    Writes the fp32 graphs, checks them against torch, writes their dynamic-int8 copies and
    ``tokenizer.json`` (checked against the torch tokenizer), and runs the int8 guard: on
    :data:`TEXT_CALIBRATION` for the text tower, and on ``calibration`` for the image tower
    (without one, the image guard stays unset and the image tower runs fp32 until a guard
    runs, e.g. on the first batch being indexed). The folder is built aside and renamed into
    place; a second process exporting the same model waits for the first and reuses its bundle.

    Args:
        encoder: a loaded torch encoder (HF CLIP, open_clip or a dual/demo model).
        calibration: ``(n, 3, crop, crop)`` pixels for the image guard, or None.
        calibration_source: what ``calibration`` is, as the guard records it ("first batch", "demo world").
        weights: the ``weights=`` the model was loaded with (it keys the model's record).
        on_progress: receives ``"onnx export"`` events.

    Raises:
        ValueError: a backend with no export, a tokenizer or graph that does not match torch.
    """
    if not exportable(encoder):
        raise ValueError(f"model {encoder.name!r} (backend {encoder.info.backend!r}) has no ONNX export")
    files = model_files(encoder)
    ident = _identity(encoder)
    key = write_model_record(encoder.name, weights, files | _identity_file(ident))
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    report = Reporter(on_progress, "onnx export")
    try:
        with file_lock(root / f"{key}.lock"):
            if not (final / BUNDLE_FILE).is_file():
                log.info("exporting model %s to ONNX (first use; later runs use the copy in %s)", encoder.name, final)
                tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
                try:
                    _write_bundle(encoder, tmp, key, report)
                    if final.exists():  # a half-written folder of a crashed process (no bundle.json)
                        shutil.rmtree(final, ignore_errors=True)
                    os.replace(tmp, final)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    finally:
        report.done()
    if calibration is not None and len(calibration):
        enc = open_bundle(final)
        enc.guard_images(calibration, calibration_source)  # type: ignore[attr-defined]
    found = bundle_dir(encoder.name, weights)
    return found or final


def _identity_file(ident: dict[str, Any]) -> dict[str, Path]:
    """The model's settings as a small file under the cache, so they key the bundle like a file does."""
    import hashlib

    text = json.dumps(ident, sort_keys=True)
    path = cache_root() / "settings" / f"{hashlib.sha256(text.encode('utf-8')).hexdigest()[:24]}.json"
    if not path.is_file():
        from clipsearch.atomic import write_atomic

        write_atomic(path, text.encode("utf-8"), fsync=False)
    return {"settings": path}


def _write_bundle(encoder: Encoder, folder: Path, key: str, report: Reporter) -> None:
    import torch

    t0 = time.perf_counter()
    report.total(5)
    image_mod, text_mod, has_cells = _tower_modules(encoder)
    tokenizer = build_tokenizer(encoder)
    bad = check_tokenizer(encoder, tokenizer)
    if bad:
        raise ValueError(f"the ONNX tokenizer of {encoder.name!r} disagrees with torch on {len(bad)} texts, e.g. {bad[0][:80]!r}")
    tokenizer.save(str(folder / "tokenizer.json"))
    report.advance()

    # text tower
    sample = list(PROBE_TEXTS) + ["x", "a much longer text with many words so that padding is needed " * 3]
    ids = _token_batch(tokenizer, sample[:2])
    _export(text_mod, (ids["input_ids"], ids["attention_mask"]), folder / "text.onnx",
            ["input_ids", "attention_mask"], ["embeds"],
            {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "embeds": {0: "batch"}})  # fmt: skip
    report.advance()

    # image tower
    if image_mod is not None:
        outputs = ["embeds", "cells"] if has_cells else ["embeds"]
        dyn = {"pixel_values": {0: "batch"}, "embeds": {0: "batch"}} | ({"cells": {0: "batch"}} if has_cells else {})
        example = torch.from_numpy(_check_pixels(encoder, 2))
        _export(image_mod, (example,), folder / "image.onnx", ["pixel_values"], outputs, dyn)
    report.advance()

    # fp32 parity with torch, then int8 copies
    _check_parity(encoder, folder, tokenizer, text_mod, image_mod, sample, has_cells)
    text_int8 = _quantize(folder / "text.onnx", folder / "text.int8.onnx", embeddings=True)
    image_int8 = _quantize(folder / "image.onnx", folder / "image.int8.onnx") if image_mod is not None else None
    report.advance()

    info = encoder.info.to_dict()
    info["extra"] = _json_safe(info["extra"])
    bundle: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "model": encoder.name,
        "key": key,
        "dim": int(encoder.dim),
        "text": {"onnx": "text.onnx", "onnx_int8": text_int8, "tokenizer": "tokenizer.json",
                 "context_length": int(encoder.info.context_length), "inputs": ["input_ids", "attention_mask"],
                 "output": "embeds"},  # fmt: skip
        "image": {"onnx": "image.onnx", "onnx_int8": image_int8, "input": "pixel_values", "output": "embeds",
                  "cells_output": "cells" if has_cells else None} if image_mod is not None else None,  # fmt: skip
        "probe_text": [],
        "guard": {"image": None, "text": None},
        "info": info,
        "exported_s": round(time.perf_counter() - t0, 2),
    }
    (folder / BUNDLE_FILE).write_text(json.dumps(bundle), encoding="utf-8")
    enc = open_bundle(folder, int8=False)
    probe_vecs = enc.encode_texts(list(PROBE_TEXTS))
    bundle["probe_text"] = np.asarray(probe_vecs, np.float32).round(6).tolist()
    if text_int8:
        texts = list(PROBE_TEXTS) + list(TEXT_CALIBRATION)
        fp32 = enc.text_embeds(texts, int8=False)  # type: ignore[attr-defined]
        int8 = enc.text_embeds(texts, int8=True)  # type: ignore[attr-defined]
        bundle["guard"]["text"] = guard_result(fp32, int8, "text sample")
        if not bundle["guard"]["text"]["int8_ok"]:
            log.info("model %s: the int8 text tower drifts (cosine %.4f < 0.995 to fp32); its queries run fp32",
                     encoder.name, bundle["guard"]["text"]["min_cosine"])  # fmt: skip
    (folder / BUNDLE_FILE).write_text(json.dumps(bundle), encoding="utf-8")
    report.advance()


def _json_safe(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        out[k] = v
    return out


def _token_batch(tokenizer: Any, texts: Sequence[str]) -> dict[str, Any]:
    import torch

    enc = tokenizer.encode_batch(list(texts))
    return {
        "input_ids": torch.tensor([e.ids for e in enc], dtype=torch.int64),
        "attention_mask": torch.tensor([e.attention_mask for e in enc], dtype=torch.int64),
    }


def _check_pixels(encoder: Encoder, n: int) -> npt.NDArray[np.float32]:
    """``n`` real model inputs: the fingerprint's picture and shifted, flipped copies of it."""
    from clipsearch.models.fingerprint import probe_image

    base = encoder.preprocess_images([probe_image()])[0]
    rows = [base] + [np.roll(base, 5 * i, axis=2)[:, ::-1] * (1.0 + 0.1 * i) for i in range(1, n)]
    return np.ascontiguousarray(np.stack(rows[:n]), dtype=np.float32)


def _export(module: Any, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: dict) -> None:
    import torch

    module.eval()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # its fused attention op has no ONNX form
    original = torch.nn.MultiheadAttention.forward
    torch.nn.MultiheadAttention.forward = _traceable_mha  # type: ignore[method-assign]
    try:
        _export_traced(module, args, path, inputs, outputs, dynamic)
    finally:
        torch.nn.MultiheadAttention.forward = original  # type: ignore[method-assign]
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _traceable_mha(self: Any, query: Any, key: Any, value: Any, key_padding_mask: Any = None, need_weights: bool = True,
                   attn_mask: Any = None, average_attn_weights: bool = True, is_causal: bool = False) -> tuple[Any, None]:  # fmt: skip
    """``nn.MultiheadAttention.forward`` (packed in-projection, no dropout: eval) written with
    ``-1`` reshapes, used only while tracing for export: torch's own
    ``F.multi_head_attention_forward`` bakes the traced sequence length into its reshapes, so the
    graph would only take texts of the example's length."""
    import torch
    import torch.nn.functional as F

    if self.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    h, d = self.num_heads, self.head_dim
    w, b = self.in_proj_weight, self.in_proj_bias
    e = self.embed_dim
    q = F.linear(query, w[:e], None if b is None else b[:e])
    k = F.linear(key, w[e : 2 * e], None if b is None else b[e : 2 * e])
    v = F.linear(value, w[2 * e :], None if b is None else b[2 * e :])

    def heads(t: Any) -> Any:  # (L, n, e) -> (n, h, L, d)
        return t.reshape(t.shape[0], -1, h, d).permute(1, 2, 0, 3)

    q, k, v = heads(q), heads(k), heads(v)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (float(d) ** -0.5)  # (n, h, Lq, Lk)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :].bool(), float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), v)  # (n, h, Lq, d)
    out = out.permute(2, 0, 1, 3).reshape(out.shape[2], -1, e)  # (Lq, n, e)
    out = self.out_proj(out)
    return (out.transpose(0, 1) if self.batch_first else out), None


def _export_traced(module: Any, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: dict) -> None:
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated and that traced shapes are
        # constants; the axes that vary are declared in `dynamic` and the parity check catches the rest.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
            opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )  # fmt: skip


def _check_parity(encoder: Encoder, folder: Path, tokenizer: Any, text_mod: Any, image_mod: Any,
                  texts: list[str], has_cells: bool) -> None:  # fmt: skip
    """The fp32 graphs against torch on texts of several lengths and a few real pictures.

    Raises:
        ValueError: a row below :data:`FP32_MIN_COSINE`.
    """
    import torch

    from clipsearch.models.onnx_runtime import make_session

    def lowest(a: Any, b: Any) -> float:
        a = np.asarray(a, np.float64).reshape(len(a), -1)
        b = np.asarray(b, np.float64).reshape(len(b), -1)
        return float(((a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)).min())

    ids = _token_batch(tokenizer, texts)
    with torch.no_grad():
        want = text_mod(ids["input_ids"], ids["attention_mask"]).float().numpy()
    got = make_session(folder / "text.onnx").run(None, {k: v.numpy() for k, v in ids.items()})[0]
    checks = {"text": lowest(want, got)}
    pixels = _check_pixels(encoder, 3) if image_mod is not None else None
    with torch.no_grad():
        out = image_mod(torch.from_numpy(pixels)) if pixels is not None else None
    outs = out if isinstance(out, tuple) else (out,)
    if pixels is not None:
        got_img = make_session(folder / "image.onnx").run(None, {"pixel_values": pixels})
        checks["image"] = lowest(outs[0].float().numpy(), got_img[0])
    if has_cells:
        c_want = outs[1].float().numpy()
        checks["cells"] = lowest(c_want.reshape(-1, c_want.shape[-1]), got_img[1].reshape(-1, c_want.shape[-1]))
    worst = min(checks, key=checks.get)  # type: ignore[arg-type]
    if checks[worst] < FP32_MIN_COSINE:
        raise ValueError(
            f"the ONNX {worst} graph of {encoder.name!r} does not match torch (cosine {checks[worst]:.6f} < {FP32_MIN_COSINE})"
        )


def _quantize(src: Path, dst: Path, *, embeddings: bool = False) -> str | None:
    """Dynamic int8 (weights int8, activations quantised per batch) of ``src``'s matrix products,
    and with ``embeddings`` its token-embedding lookups too; the file name, or None when the
    quantiser cannot handle the graph.

    A text tower's token-embedding table is most of its file (ViT-B/32: 97 of 133 MB after
    the matrix products); int8 there makes the graph 60 MB, and the session that a one-off
    ``clipsearch search`` process opens loads in 0.15 s instead of 0.23 s. The guard judges
    the whole int8 graph, so this is used only where the vectors stay within its bound."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    hush = _RootOnly()
    root.addFilter(hush)  # the quantiser logs advice on the root logger for every graph; it is not for our users
    try:
        # Matrix products (and lookups, see above), never convolutions: a transformer's time goes
        # to its matrix products, and ORT's integer convolution kernels are slower on CPU than its fp32 ones.
        ops = ["MatMul", "Gemm", *(["Gather"] if embeddings else [])]
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=ops)
    except Exception as e:  # noqa: BLE001 - the quantiser raises whatever its graph passes raise
        log.info("no int8 copy of %s: %s", src.name, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None
    finally:
        root.removeFilter(hush)
    import onnx

    if not any(n.op_type == "DynamicQuantizeLinear" for n in onnx.load(str(dst), load_external_data=False).graph.node):
        dst.unlink()  # nothing was quantised (a convolutional tower): the fp32 graph is all there is
        return None
    return dst.name


class _RootOnly(logging.Filter):
    """Drops records logged on the root logger itself (named loggers' records pass)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "root"
