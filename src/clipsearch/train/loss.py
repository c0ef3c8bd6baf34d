"""CLIP's symmetric contrastive loss, with a learned temperature and several positives per row.

For a batch of n image-caption pairs (unit vectors), plus optionally extra images or extra
captions that are only negatives, the logits are ``s * image @ text.T`` with ``s = exp(logit_scale)`` clamped
at :data:`MAX_LOGIT_SCALE`. The loss is the mean of two cross-entropies: each image against all texts (rows) and each text
against all images (columns). With a target matrix ``T`` (``T[i, j]`` true when text j
describes image i, the diagonal always true), each row's (column's) target distribution is
uniform over its positives, so a caption that fits several images of the batch does not push
the others away.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from clipsearch.models.dual.config import MAX_LOGIT_SCALE

if TYPE_CHECKING:
    import torch

INIT_LOGIT_SCALE = math.log(1 / 0.07)
"""CLIP's initial ``logit_scale`` (a temperature of 0.07)."""


def scale_from_param(logit_scale: "torch.Tensor") -> "torch.Tensor":
    """``exp(logit_scale)`` clamped at :data:`MAX_LOGIT_SCALE` (the clamp stops the gradient above it)."""
    import torch

    return torch.clamp(logit_scale.exp(), max=MAX_LOGIT_SCALE)


def contrastive_loss(
    image_emb: "torch.Tensor",
    text_emb: "torch.Tensor",
    logit_scale: "torch.Tensor",
    targets: "torch.Tensor | None" = None,
    n_pairs: int | None = None,
) -> "torch.Tensor":
    """Symmetric cross-entropy over the image x text similarity matrix.

    Args:
        image_emb: ``(m, d)`` image vectors, L2-normalised. The first ``n_pairs`` have their own
            caption; the rest are hard negatives without one (such as binding twins).
        text_emb: ``(n, d)`` text vectors, L2-normalised; row i < ``n_pairs`` is the caption
            of image i, the rest are hard-negative captions without an image of their own
            (such as the same caption with its colours bound to other shapes).
        logit_scale: scalar parameter; the logits are multiplied by ``min(exp(logit_scale), 100)``.
        targets: optional ``(m, n)`` bool, 0/1 or non-negative weight matrix, ``targets[i, j] > 0``
            when text j matches image i. ``None``: the identity (needs ``m == n``).
        n_pairs: how many leading images and texts are pairs; default ``min(m, n)``.

    Returns:
        A scalar tensor: ``(CE(image -> text) + CE(text -> image)) / 2``. Each image's row is
        a softmax over all n texts and each text's column one over all m images; a row (column)
        without a positive only acts through the other direction and is left out of its mean.
    """
    import torch

    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(
            f"image_emb and text_emb must be (m, d) and (n, d); got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    m, n = image_emb.shape[0], text_emb.shape[0]
    n_pairs = min(m, n) if n_pairs is None else int(n_pairs)
    if not 1 <= n_pairs <= min(m, n):
        raise ValueError(f"n_pairs must be between 1 and {min(m, n)} for {m} images and {n} texts, got {n_pairs}")
    logits = scale_from_param(logit_scale) * image_emb @ text_emb.T  # (m images, n texts)
    if targets is None:
        if m != n:
            raise ValueError(f"targets are required when there are {m} images and {n} texts")
        labels = torch.arange(n, device=logits.device)
        return (
            torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)
        ) / 2
    if tuple(targets.shape) != (m, n):
        raise ValueError(f"targets must be ({m}, {n}) for {m} images and {n} texts; got {tuple(targets.shape)}")
    t = targets.to(logits.dtype)
    if bool((t[:n_pairs, :n_pairs].diagonal() <= 0).any()):
        raise ValueError("targets must be true on the diagonal: every caption matches its own image")
    rows = t.sum(dim=1) > 0  # images without a matching caption only act as negatives
    cols = t.sum(dim=0) > 0  # captions that match no image only act as negatives
    row_targets = t[rows] / t[rows].sum(dim=1, keepdim=True)
    col_targets = t[:, cols] / t[:, cols].sum(dim=0, keepdim=True)
    loss_i2t = -(row_targets * torch.log_softmax(logits[rows], dim=1)).sum(dim=1).mean()
    loss_t2i = -(col_targets * torch.log_softmax(logits[:, cols], dim=0)).sum(dim=0).mean()
    return (loss_i2t + loss_t2i) / 2


def box_cell_targets(boxes: "list", grid: int) -> "torch.Tensor":
    """Where the objects are, as a distribution over an image's grid cells.

    Args:
        boxes: per image, a ``(k, 4)`` array of boxes ``(x0, y0, x1, y1)`` as fractions of the
            image's width and height (the model squashes the whole image onto its grid, so
            fractions map straight onto cells).
        grid: cells per side.

    Returns:
        ``(n, grid * grid)`` rows that sum to 1: the share of the images' box area in each cell
        (row-major); all zeros for an image without a box.
    """
    import numpy as np
    import torch

    edges = np.linspace(0.0, 1.0, grid + 1)
    lo, hi = edges[:-1], edges[1:]
    out = np.zeros((len(boxes), grid, grid), dtype=np.float32)
    for i, bx in enumerate(boxes):
        for x0, y0, x1, y1 in np.asarray(bx, dtype=np.float64).reshape(-1, 4):
            wx = np.clip(np.minimum(hi, x1) - np.maximum(lo, x0), 0.0, None)  # overlap with each column
            wy = np.clip(np.minimum(hi, y1) - np.maximum(lo, y0), 0.0, None)  # and each row
            out[i] += np.outer(wy, wx)
    flat = out.reshape(len(boxes), -1)
    total = flat.sum(axis=1, keepdims=True)
    return torch.from_numpy(np.divide(flat, total, out=np.zeros_like(flat), where=total > 0))


def object_attention_loss(weights: "torch.Tensor", targets: "torch.Tensor") -> "torch.Tensor":
    """Cross-entropy of the pool's cell weights against where the objects are.

    Args:
        weights: ``(n, cells)`` attention-pool weights (rows sum to 1).
        targets: ``(n, cells)`` from :func:`box_cell_targets`; rows of zeros are left out.

    Returns:
        A scalar tensor: the mean over images with a box of ``-sum(targets * log(weights))``.
    """
    import torch

    keep = targets.sum(dim=1) > 0
    if not bool(keep.any()):
        return weights.sum() * 0.0
    return -(targets[keep] * torch.log(weights[keep].clamp_min(1e-12))).sum(dim=1).mean()
