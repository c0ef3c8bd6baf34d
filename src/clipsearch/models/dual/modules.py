"""The torch modules of a ``"dual"`` model: image towers, the image side with its cell grid and
pool, the text head, and :class:`DualModel`, which joins them with a text tower.

This module imports torch; the rest of :mod:`clipsearch.models.dual` imports it only when a model
is built or loaded, so ``import clipsearch.models.dual`` stays light. Attribute names are the keys
of ``model.safetensors``: renaming one breaks every saved folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipsearch.models.dual.config import DualConfig, dual_preprocess, grid_side


def conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    """3x3 convolution (``stride`` 2 halves the grid), batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class ResBlock(nn.Module):
    """Two 3x3 convolutions around a skip connection; ``(n, C, h, w)`` in and out."""

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
        g = grid_side(self.cfg)
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
    """Image side, text tower + head, learned temperature; see :mod:`clipsearch.models.dual`."""

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
        """``input_ids`` and ``attention_mask``, ``(n, L)`` on the model's device, cut to
        ``context_length`` and padded to the longest text."""
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.cfg.context_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    def text_inputs(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """What :meth:`encode_text` takes for ``texts``: their token ids. (The trainer's cache of a
        frozen tower's token states, :class:`clipsearch.train.text_cache.TextStateCache`, gives the
        states themselves instead.)"""
        return self.tokenize(texts)

    def tower_states(self, ids: dict[str, torch.Tensor]) -> torch.Tensor:
        """The text tower's ``(n, T, text_width)`` token states for :meth:`tokenize` output."""
        return self.text_tower(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state

    def encode_text(self, inputs: dict[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
        """:meth:`text_inputs` of n texts (token ids, or ``hidden`` ``(n, T, text_width)`` token
        states with their ``(n, T)`` boolean ``mask``) -> ``(n, D)``."""
        if "hidden" in inputs:
            hidden, mask = inputs["hidden"], inputs["mask"]
        else:
            mask = inputs["attention_mask"].bool()
            if self.cfg.text_trainable:
                hidden = self.tower_states(inputs)
            else:
                with torch.no_grad():
                    hidden = self.tower_states(inputs)
        v = self.text_head(hidden, mask)
        return F.normalize(v, dim=-1) if normalize else v

    def own_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything saved in model.safetensors: all but the text tower."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("text_tower.")}
