"""CLIP's symmetric contrastive loss, with a learned temperature and several positives per row.

For a batch of n images and n texts (unit vectors), plus optionally extra images that are
only negatives, the logits are ``s * image @ text.T`` with ``s = exp(logit_scale)`` clamped
at :data:`MAX_LOGIT_SCALE`. The loss is the mean of two cross-entropies: each image against all texts (rows) and each text
against all images (columns). With a target matrix ``T`` (``T[i, j]`` true when text j
describes image i, the diagonal always true), each row's (column's) target distribution is
uniform over its positives, so a caption that fits several images of the batch does not push
the others away.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

INIT_LOGIT_SCALE = math.log(1 / 0.07)
"""CLIP's initial ``logit_scale`` (a temperature of 0.07)."""

MAX_LOGIT_SCALE = 100.0
"""``exp(logit_scale)`` is clamped here, as in CLIP, so the logits cannot blow up."""


def scale_from_param(logit_scale: "torch.Tensor") -> "torch.Tensor":
    """``exp(logit_scale)`` clamped at :data:`MAX_LOGIT_SCALE` (the clamp stops the gradient above it)."""
    import torch

    return torch.clamp(logit_scale.exp(), max=MAX_LOGIT_SCALE)


def contrastive_loss(
    image_emb: "torch.Tensor",
    text_emb: "torch.Tensor",
    logit_scale: "torch.Tensor",
    targets: "torch.Tensor | None" = None,
) -> "torch.Tensor":
    """Symmetric cross-entropy over the image x text similarity matrix.

    Args:
        image_emb: ``(m, d)`` image vectors, L2-normalised, ``m >= n``; images past the first n
            carry no caption of their own (hard negatives such as binding twins).
        text_emb: ``(n, d)`` text vectors, L2-normalised; row i is the caption of image i.
        logit_scale: scalar parameter; the logits are multiplied by ``min(exp(logit_scale), 100)``.
        targets: optional ``(m, n)`` bool or 0/1 matrix, ``targets[i, j]`` true when text j
            matches image i. ``None``: the identity (needs ``m == n``).

    Returns:
        A scalar tensor: ``(CE(image -> text) + CE(text -> image)) / 2``. The image -> text
        mean is over the images with at least one matching text; the text -> image mean is
        over all n texts, each against all m images.
    """
    import torch

    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(
            f"image_emb and text_emb must be (m, d) and (n, d); got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    m, n = image_emb.shape[0], text_emb.shape[0]
    if m < n:
        raise ValueError(f"every caption needs its image: got {m} images for {n} captions")
    logits = scale_from_param(logit_scale) * image_emb @ text_emb.T  # (m images, n texts)
    if targets is None:
        if m != n:
            raise ValueError(f"targets are required when images ({m}) outnumber captions ({n})")
        labels = torch.arange(n, device=logits.device)
        return (
            torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)
        ) / 2
    if tuple(targets.shape) != (m, n):
        raise ValueError(f"targets must be ({m}, {n}) for {m} images and {n} captions; got {tuple(targets.shape)}")
    t = targets.to(logits.dtype)
    if bool((t[:n].diagonal() <= 0).any()):
        raise ValueError("targets must be true on the diagonal: every caption matches its own image")
    has_text = t.sum(dim=1) > 0  # images without a matching caption only act as negatives
    row_targets = t[has_text] / t[has_text].sum(dim=1, keepdim=True)
    col_targets = t / t.sum(dim=0, keepdim=True)
    loss_i2t = -(row_targets * torch.log_softmax(logits[has_text], dim=1)).sum(dim=1).mean()
    loss_t2i = -(col_targets * torch.log_softmax(logits, dim=0)).sum(dim=0).mean()
    return (loss_i2t + loss_t2i) / 2
