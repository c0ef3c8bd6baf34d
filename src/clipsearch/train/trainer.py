"""The contrastive trainer behind ``clipsearch train``.

One loop for both model kinds (:mod:`clipsearch.models.dual`; a CLIP base through
:mod:`clipsearch.train.clip_finetune`): batches from :mod:`clipsearch.train.data`, the symmetric
loss of :mod:`clipsearch.train.loss`, AdamW with a linear warm-up and a cosine decay over
``steps``, periodic recall@k on a held-out set, checkpoints, ``--resume`` and a PNG of the curves.

Progress leaves as events (:mod:`clipsearch.events`) to the ``on_progress`` callback of
:func:`train`, task ``"training"``:

- ``total`` (the planned steps) and ``advance`` (one per step, the steps already done at once on
  a resume), with ``progress`` on;
- a message per logged window, with ``progress`` on: ``"step 120 of 3500: loss 3.2749,
  temperature 0.0716, 171 img/s"``, data ``step, steps, loss, temperature, lr, img_per_s`` (and
  ``object_attention`` under ``--attend-objects``);
- always, a message per evaluation (``"step 500: eval text->image R@1 ..."``, data ``step, eval``)
  and one per notice (the text cache filled, the time limit reached, undecodable images);
- ``done`` when :func:`train` returns;
- the text cache's own events, task :data:`clipsearch.train.text_cache.TASK`, with ``progress`` on.

Output folder::

    OUT/clipsearch_model.json, model.safetensors, ...   the model (loadable with --model OUT)
    OUT/checkpoint/                                     model + optimizer.pt + trainer_state.json
    OUT/history.jsonl                                   loss, temperature, lr, eval per log step
    OUT/training_curves.png

Determinism: the model is initialised after ``torch.manual_seed(seed)``, batch k is a pure
function of ``(seed, k)``, a resumed run continues exactly where the checkpoint stopped, and the
frozen text tower's states are cached in batches that depend only on the set of captions. That
last point mattered: the tower's float16 states shift a little with the texts that share a
padded batch (22 of 3000 demo captions), and batching ties in a set's hash order made two
launches of the full demo recipe drift apart. Since the fix, launches of the full-size recipe
under different hash seeds give bit-identical weights (measured over 40 steps; tested small).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.events import ProgressCallback, Reporter

CHECKPOINT_DIR = "checkpoint"
HISTORY_FILE = "history.jsonl"
CURVES_FILE = "training_curves.png"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"

# Options that decide the result; a resumed run must repeat them exactly.
RESUME_KEYS = (
    "pairs", "base", "image_tower", "text_tower", "freeze_text", "batch_size", "lr", "weight_decay",
    "warmup", "seed", "caption_pool", "image_size", "embed_dim", "pool", "epochs", "twins",
    "soft_targets", "negatives", "text_layers", "twin_kind", "object_queries", "pool_positions",
    "text_positions", "attend_objects", "lock_image",
)  # fmt: skip
PLACE_INIT_STD = 0.1  # --attend-objects: cell-place embeddings start at about a third of a pooled vector's length
DUAL_BASE_LR = 3e-4  # default peak lr to fine-tune a dual encoder (a seventh of training from scratch)
RESUME_DEFAULTS = {  # options added later: what checkpoints without them were trained with
    "twins": 0.0, "soft_targets": False, "negatives": False, "text_layers": 0, "twin_kind": "binding",
    "object_queries": 0, "pool_positions": False, "text_positions": False,
    "attend_objects": 0.0, "lock_image": False,
}  # fmt: skip


@dataclass
class TrainOptions:
    """Everything ``clipsearch train`` takes; see the CLI help for each."""

    pairs: str  # folder with metadata.jsonl, .csv/.jsonl file, or "demo-world"
    out: str  # output folder
    base: str | None = None  # fine-tune this HF CLIP checkpoint, or a dual-encoder folder from clipsearch train
    image_tower: str = "cnn"  # "cnn", "resnet18" or "vit"
    text_tower: str = "minilm"  # text encoder for the "dual" kind
    freeze_text: bool | None = None  # keep the text tower fixed; default: frozen towers, trainable --base
    steps: int | None = None  # optimizer steps (required for demo-world)
    epochs: int | None = None  # passes over file pairs (when steps is not given; default 10)
    batch_size: int = 128
    lr: float | None = None  # peak learning rate; default 2e-3 (towers), 1e-5 (CLIP --base), 3e-4 (dual-encoder --base)
    weight_decay: float = 0.05
    warmup: int | None = None  # warm-up steps; default min(300, steps // 10)
    seed: int = 0
    eval_pairs: str | None = None  # held-out pairs, or "demo-world" (eval split in memory)
    eval_every: int = 500  # steps between evaluations (and checkpoints)
    eval_size: int = 500  # scenes in the in-memory demo-world eval set
    resume: bool = False  # continue from OUT/checkpoint
    minutes: float | None = None  # stop (with a checkpoint) after this much wall time of this run's loop
    threads: int | None = None  # torch threads for the training step
    device: str | None = None  # cpu, cuda, cuda:N, mps or auto; None: $CLIPSEARCH_DEVICE, else cpu
    workers: int = 0  # processes that render / decode batches ahead of the training step
    caption_pool: int = 20000  # demo-world: distinct captions drawn once; 0 = fresh captions
    twins: float = 0.0  # demo-world: share of each batch's images that are binding twins (hard negatives)
    twin_kind: str = "binding"  # demo-world: "binding" twins, or "contrast" twins that falsify their caption
    soft_targets: bool = False  # demo-world: weigh positives by the generator's caption likelihood
    negatives: bool = False  # demo-world: add each caption's binding-swapped twin as a hard-negative caption
    object_queries: int = 0  # demo-world: single-object queries per batch, as captions without an image
    text_layers: int = 0  # dual models: trainable transformer layers in the text head (added to a --base that has none)
    text_positions: bool = False  # dual models: the text head learns word order (added to a --base too)
    image_size: int | None = None  # model input side; default per image tower
    embed_dim: int = 256
    pool: str = "attention"
    pool_positions: bool = False  # attention pool: a learned embedding of each cell's place (added to a --base too)
    attend_objects: float = 0.0  # demo-world: weight of a loss that draws the attention pool to the objects' boxes
    lock_image: bool = False  # train the text side only (LiT): the image side stays exactly as it is
    progress: bool = True  # report each step and logged window (False: evaluations and notices only)


@dataclass
class TrainResult:
    out: Path
    step: int  # steps done in total
    steps: int  # steps planned
    finished: bool  # False when --minutes stopped it early
    final_loss: float | None
    eval: dict[str, Any] | None  # the last evaluation
    images_per_second: float
    history: list[dict[str, Any]] = field(default_factory=list)


def _resolve_defaults(opts: TrainOptions) -> TrainOptions:
    from clipsearch.models.device import resolve_device
    from clipsearch.models.dual import DEFAULT_IMAGE_SIZE, IMAGE_TOWERS
    from clipsearch.train.data import DEMO_WORLD, TWIN_KINDS

    if opts.image_tower not in IMAGE_TOWERS:
        raise ValueError(f"unknown image tower {opts.image_tower!r}; use one of {', '.join(IMAGE_TOWERS)}")
    opts.device = resolve_device(opts.device)  # the saved options say where it trained
    base_cfg = dual_base_config(opts.base) if opts.base else None
    if base_cfg is not None:
        if base_cfg["text_head_layers"] and opts.text_layers not in (0, base_cfg["text_head_layers"]):
            raise ValueError(
                f"--text-layers comes from the base model, which has {base_cfg['text_head_layers']}; leave it out"
            )
        # The architecture is the base model's: record it, so the saved options and --resume tell the truth.
        opts.image_tower, opts.image_size = base_cfg["image_tower"], base_cfg["image_size"]
        opts.embed_dim, opts.pool = base_cfg["embed_dim"], base_cfg["pool"]
        opts.text_tower = base_cfg["text_tower"]
        opts.text_layers = base_cfg["text_head_layers"] or opts.text_layers  # new layers start as the identity
        opts.pool_positions = opts.pool_positions or base_cfg["pool_positions"]
        opts.text_positions = opts.text_positions or base_cfg["text_head_positions"]
    if opts.lr is None:
        opts.lr = 2e-3 if not opts.base else (DUAL_BASE_LR if base_cfg is not None else 1e-5)
    if opts.freeze_text is None:
        opts.freeze_text = not base_cfg["text_trainable"] if base_cfg is not None else not opts.base
    if opts.image_size is None:
        opts.image_size = DEFAULT_IMAGE_SIZE[opts.image_tower]
    for name in ("batch_size", "eval_every", "eval_size"):
        if getattr(opts, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(opts, name)}")
    if opts.batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 for a contrastive loss, got {opts.batch_size}")
    if opts.steps is not None and opts.steps < 1:
        raise ValueError(f"steps must be at least 1, got {opts.steps}")
    if opts.epochs is not None and opts.epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {opts.epochs}")
    if opts.lr <= 0:
        raise ValueError(f"lr must be positive, got {opts.lr}")
    if opts.minutes is not None and opts.minutes <= 0:
        raise ValueError(f"minutes must be positive, got {opts.minutes}")
    if opts.caption_pool < 0:
        raise ValueError(f"caption_pool must be 0 or more, got {opts.caption_pool}")
    if not 0.0 <= opts.twins <= 0.5:
        raise ValueError(f"twins is a share of the batch in [0, 0.5], got {opts.twins}")
    if opts.twin_kind not in TWIN_KINDS:
        raise ValueError(f"unknown twin kind {opts.twin_kind!r}; use one of {', '.join(TWIN_KINDS)}")
    if opts.pairs == DEMO_WORLD and opts.steps is None:
        raise ValueError("pairs 'demo-world' is endless: give the number of steps (--steps N)")
    if opts.pairs == DEMO_WORLD and opts.epochs is not None:
        raise ValueError("pairs 'demo-world' has no epochs: give --steps N instead of --epochs")
    if opts.twins and opts.pairs != DEMO_WORLD:
        raise ValueError("--twins needs pairs 'demo-world': twins are drawn from the generator's scenes")
    if opts.soft_targets and opts.pairs != DEMO_WORLD:
        raise ValueError("--soft-targets needs pairs 'demo-world': the weights come from the generator's scenes")
    if opts.negatives and (opts.pairs != DEMO_WORLD or not opts.caption_pool):
        raise ValueError("--negatives needs pairs 'demo-world' and a caption pool: negatives are drawn with it")
    if opts.object_queries < 0:
        raise ValueError(f"object_queries must be 0 or more, got {opts.object_queries}")
    if opts.object_queries and opts.pairs != DEMO_WORLD:
        raise ValueError("--object-queries needs pairs 'demo-world': which scenes hold an object comes from the generator")
    if opts.attend_objects < 0:
        raise ValueError(f"attend_objects is a loss weight, 0 or more, got {opts.attend_objects}")
    if opts.attend_objects and opts.pairs != DEMO_WORLD:
        raise ValueError("--attend-objects needs pairs 'demo-world': the objects' boxes come from the generator")
    if opts.attend_objects and opts.pool != "attention":
        raise ValueError("--attend-objects trains the attention pool's cell weights; this model pools by mean")
    if opts.lock_image and opts.attend_objects:
        raise ValueError("--attend-objects trains the image side's pool, which --lock-image keeps fixed; use one")
    if opts.lock_image and not opts.base:
        raise ValueError("--lock-image keeps the image side of a trained model fixed; give that model as --base")
    if opts.text_layers < 0:
        raise ValueError(f"text_layers must be 0 or more, got {opts.text_layers}")
    if opts.base and base_cfg is None:  # a CLIP checkpoint: options that shape a dual encoder do not apply
        for given, what in (
            (opts.text_layers, "--text-layers builds a dual encoder's text head"),
            (opts.pool_positions, "--pool-positions belongs to a dual encoder's attention pool"),
            (opts.text_positions, "--text-positions belongs to a dual encoder's text head"),
            (opts.attend_objects, "--attend-objects trains a dual encoder's attention pool"),
        ):
            if given:
                raise ValueError(f"{what}; a --base CLIP model has its own")
    return opts


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then cosine down to 5% at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, steps - warmup))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))


def load_trainable(folder: Path) -> Any:
    """The trainable torch module saved in a model folder (a checkpoint to resume, or a
    dual-encoder ``--base`` to fine-tune), of either kind."""
    from clipsearch.models.dual import HF_DIR, load_module, read_config

    if read_config(folder)["kind"] == "hf_clip":
        from clipsearch.train.clip_finetune import build_hf_clip

        return build_hf_clip(str(folder / HF_DIR))
    return load_module(folder)


def dual_base_config(base: str) -> dict[str, Any] | None:
    """The :class:`~clipsearch.models.dual.DualConfig` fields of a ``--base`` that is a
    dual-encoder folder written by ``clipsearch train``; ``None`` for anything else (a CLIP
    checkpoint folder or hub id)."""
    from clipsearch.models.dual import CONFIG_FILE, DualConfig, read_config

    folder = Path(base).expanduser()
    if not (folder / CONFIG_FILE).is_file():
        return None
    meta = read_config(folder)
    return asdict(DualConfig.from_dict(meta["config"])) if meta["kind"] == "dual" else None  # with later fields


def build_model(opts: TrainOptions) -> Any:
    """A fresh model for ``opts`` (seed torch first for a fixed initialisation), or the
    ``--base`` model to fine-tune."""
    from clipsearch.models.dual import DualConfig, build_dual, load_module

    if opts.base and dual_base_config(opts.base) is not None:
        model = load_module(Path(opts.base).expanduser())
        model.set_text_trainable(not opts.freeze_text)
        # Each addition starts as a no-op, so the base's vectors are kept until training moves them;
        # except cell places under --attend-objects, which start random (see enable_pool_positions).
        if opts.pool_positions and model.image.cell_places is None:
            model.image.enable_pool_positions(PLACE_INIT_STD if opts.attend_objects else 0.0)
        if opts.text_positions and model.text_head.places is None:
            model.text_head.enable_positions()
        if opts.text_layers and model.text_head.mix is None:
            model.text_head.add_layers(opts.text_layers)
        return model
    if opts.base:
        from clipsearch.train.clip_finetune import build_hf_clip

        return build_hf_clip(opts.base, freeze_text=opts.freeze_text)
    cfg = DualConfig(
        image_tower=opts.image_tower,
        image_size=int(opts.image_size or 64),
        embed_dim=opts.embed_dim,
        pool=opts.pool,
        pool_positions=opts.pool_positions,
        text_tower=opts.text_tower,
        text_trainable=not opts.freeze_text,
        text_head_layers=opts.text_layers,
        text_head_positions=opts.text_positions,
    )
    model = build_dual(cfg)
    if opts.pool_positions and opts.attend_objects:
        model.image.enable_pool_positions(PLACE_INIT_STD)
    return model


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "logit_scale" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


TextInputs = Callable[[Sequence[str]], dict[str, Any]]
"""Texts -> what the model's ``encode_text`` takes: ``model.text_inputs``, or a text cache's ``inputs``."""


def _embed_eval(
    model: Any, text_inputs: TextInputs, pixels: np.ndarray, captions: list[str], batch: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(n, d)`` unit image and caption vectors and, for a model with a grid, the images'
    ``(n, gh, gw, d)`` unit cells (else ``None``), from one pass over the images."""
    import torch

    grid = hasattr(model, "encode_image_with_grid")
    was_training = model.training
    model.eval()
    imgs, cells = [], []
    with torch.inference_mode():
        for i in range(0, len(pixels), batch):
            x = torch.from_numpy(pixels[i : i + batch]).to(model.device)
            if grid:
                v, c = model.encode_image_with_grid(x)
                cells.append(c.float().cpu().numpy())
            else:
                v = model.encode_image(x)
            imgs.append(v.float().cpu().numpy())
        txt = torch.cat(
            [model.encode_text(text_inputs(captions[i : i + batch])) for i in range(0, len(captions), batch)]
        )
    model.train(was_training)
    return np.concatenate(imgs), txt.float().cpu().numpy(), (np.concatenate(cells) if grid else None)


class _EvalSet:
    def __init__(self, opts: TrainOptions, preprocess: Any):
        from clipsearch.train.data import DEMO_WORLD, demo_eval_set, pairs_eval_set, read_pairs

        assert opts.eval_pairs is not None
        if opts.eval_pairs == DEMO_WORLD:
            self.pixels, self.captions = demo_eval_set(opts.seed, opts.eval_size, preprocess)
            self.keys = None
        else:
            self.pixels, self.captions, self.keys = pairs_eval_set(read_pairs(opts.eval_pairs), preprocess)

    def run(self, model: Any, text_inputs: TextInputs) -> dict[str, Any]:
        """Recall both ways; text -> image ranked as search ranks a store (see
        :func:`~clipsearch.train.evaluate.recall_as_search`)."""
        from clipsearch.train.evaluate import recall_as_search

        img, txt, grids = _embed_eval(model, text_inputs, self.pixels, self.captions)
        return recall_as_search(img, txt, self.captions, self.keys, grids)


def _save_checkpoint(model: Any, optimizer: Any, out: Path, state: dict[str, Any], transformers_bars: bool) -> None:
    """Write OUT/checkpoint atomically (a temporary folder renamed over the old one)."""
    import torch

    from clipsearch.models.dual import save_model

    tmp = out / (CHECKPOINT_DIR + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model(model, tmp, training=state["summary"], transformers_bars=transformers_bars)
    blob = {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_initialized():  # dropout on a GPU draws from its own generators
        blob["cuda_rng"] = torch.cuda.get_rng_state_all()
    torch.save(blob, tmp / OPTIMIZER_FILE)
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    final = out / CHECKPOINT_DIR
    old = out / (CHECKPOINT_DIR + ".old")
    if final.exists():
        final.replace(old)
    tmp.replace(final)
    if old.exists():
        shutil.rmtree(old)


def _write_history(out: Path, history: list[dict[str, Any]]) -> None:
    (out / HISTORY_FILE).write_text("".join(json.dumps(h) + "\n" for h in history), encoding="utf-8")


def plot_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """Loss, temperature and eval recall@k against step, as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [h for h in history if "loss" in h]
    evals = [h for h in history if "eval" in h]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    attention = [h for h in train if "object_attention" in h]
    if train:
        steps = [h["step"] for h in train]
        axes[0].plot(steps, [h["loss"] for h in train], marker=".", label="total" if attention else None)
        axes[1].plot(steps, [h["logit_scale"] for h in train], marker=".")  # a short run logs one point: a marker shows it
    if attention:  # --attend-objects adds its weighted term to the contrastive loss
        axes[0].plot([h["step"] for h in attention], [h["object_attention"] for h in attention], "--",
                     label="object attention (unweighted)")  # fmt: skip
        axes[0].legend(fontsize=7)
    axes[0].set(title="loss" if attention else "contrastive loss", xlabel="step")
    axes[1].set(title="logit scale (1 / temperature)", xlabel="step")
    for direction, style in (("text_to_image", "-"), ("image_to_text", "--")):
        for k in ("R@1", "R@5", "R@10"):
            if evals:
                axes[2].plot(
                    [h["step"] for h in evals], [h["eval"][direction][k] for h in evals], style, marker="o",
                    label=f"{direction.replace('_to_', '->')} {k}",
                )  # fmt: skip
    axes[2].set(title="held-out recall", xlabel="step", ylim=(0, 1.02))
    if evals:
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def train(  # noqa: C901 - the loop reads best in one place
    opts: TrainOptions, on_progress: ProgressCallback | None = None, *, transformers_bars: bool = False
) -> TrainResult:
    """Train a dual encoder (or fine-tune CLIP) as ``opts`` says; see the module docstring.

    Args:
        opts: what to train, on what, how long.
        on_progress: receives the progress events listed in the module docstring.
        transformers_bars: let transformers show its own bar while a Hugging Face part of the
            model is written (a caller drawing on a terminal may want it; a log does not).

    Returns:
        A :class:`TrainResult`; the model is in ``opts.out``.

    Raises:
        ValueError: bad options, an output folder that already holds a model (without
            ``resume``), or resume options that differ from the checkpoint's.
    """
    import torch

    from clipsearch.models.dual import MAX_LOGIT_SCALE, save_model
    from clipsearch.train.data import (
        DEMO_WORLD,
        DemoWorldBatches,
        PairBatches,
        binding_negatives,
        caption_pool,
        iterate_batches,
        object_query_texts,
        read_pairs,
    )
    from clipsearch.train.loss import box_cell_targets, contrastive_loss, object_attention_loss
    from clipsearch.train.text_cache import TextStateCache

    opts = _resolve_defaults(opts)
    device = opts.device  # resolved by _resolve_defaults
    report = Reporter(on_progress, "training")
    t_run = time.perf_counter()  # --minutes counts from here: caching caption states is part of the run
    if opts.workers:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer must not run threads across fork
    out = Path(opts.out).expanduser()
    ckpt = out / CHECKPOINT_DIR
    if opts.threads:
        torch.set_num_threads(int(opts.threads))

    saved: dict[str, Any] | None = None
    if opts.resume:
        if not (ckpt / STATE_FILE).is_file():
            raise ValueError(f"nothing to resume: {ckpt / STATE_FILE} does not exist")
        saved = json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8"))
        differ = {
            k: (saved["options"].get(k), getattr(opts, k))
            for k in RESUME_KEYS
            if saved["options"].get(k, RESUME_DEFAULTS.get(k)) != getattr(opts, k)
        }
        if differ:
            detail = ", ".join(f"{k}={a!r} (now {b!r})" for k, (a, b) in differ.items())
            raise ValueError(f"cannot resume: the checkpoint was trained with {detail}; repeat the original options")
    elif (out / "clipsearch_model.json").exists() or ckpt.exists():
        raise ValueError(f"{out} already holds a trained model; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(opts.seed)
    model = (load_trainable(ckpt) if saved else build_model(opts)).to(device)
    if opts.lock_image:
        model.lock_image()
    if saved and getattr(model, "kind", "") == "hf_clip" and opts.freeze_text:
        model.clip.text_model.requires_grad_(False)
    preprocess = model.preprocess

    demo = opts.pairs == DEMO_WORLD
    if demo:
        pool = caption_pool(opts.seed, opts.caption_pool) if opts.caption_pool else None
        negatives = binding_negatives(opts.seed, opts.caption_pool) if opts.negatives else {}
        source: Any = DemoWorldBatches(
            preprocess, opts.batch_size, opts.seed, pool, twins=opts.twins, twin_kind=opts.twin_kind,
            soft_targets=opts.soft_targets, negatives=negatives, object_queries=opts.object_queries,
        )  # fmt: skip
        steps = opts.steps
    else:
        pairs = read_pairs(opts.pairs)
        source = PairBatches(pairs, preprocess, opts.batch_size, opts.seed)
        steps = opts.steps if opts.steps is not None else (opts.epochs or 10) * source.steps_per_epoch
        pool, negatives = None, {}
    warmup = opts.warmup if opts.warmup is not None else min(300, max(1, steps // 10))

    text_inputs: TextInputs = model.text_inputs
    if getattr(model, "kind", "") == "dual" and opts.freeze_text:
        cache = TextStateCache(model)  # captions outside the known set join it as batches bring them
        text_inputs = cache.inputs
        texts = [c for c, _ in pool] if pool else ([] if demo else sorted({p.caption for p in pairs}))
        texts += [negative for negative, _ in negatives.values()]
        texts += object_query_texts() if opts.object_queries else []
        if texts:
            t0 = time.perf_counter()
            report.message(f"caching text tower states for {len(texts)} captions (once, before the first step)",
                           captions=len(texts))  # fmt: skip
            deadline = None if opts.minutes is None else t_run + opts.minutes * 60
            cache.fill(texts, on_progress=on_progress if opts.progress else None, deadline=deadline)
            seconds = time.perf_counter() - t0
            report.message(f"cached text tower states for {len(texts)} captions in {seconds:.0f} s",
                           captions=len(texts), seconds=round(seconds, 1))  # fmt: skip

    eval_set = _EvalSet(opts, preprocess) if opts.eval_pairs else None

    optimizer = torch.optim.AdamW(_param_groups(model, opts.weight_decay), lr=opts.lr, betas=(0.9, 0.98), eps=1e-6)
    start, history, elapsed_before = 0, [], 0.0
    if saved:
        blob = torch.load(ckpt / OPTIMIZER_FILE, weights_only=True, map_location="cpu")  # moved to the params' device
        optimizer.load_state_dict(blob["optimizer"])
        torch.set_rng_state(blob["torch_rng"])
        if "cuda_rng" in blob and str(device).startswith("cuda"):
            torch.cuda.set_rng_state_all(blob["cuda_rng"])
        start, history, elapsed_before = int(saved["step"]), list(saved["history"]), float(saved.get("elapsed_s", 0.0))
    if start >= steps:
        report.message(f"already trained {start} of {steps} steps; nothing to do", step=start, steps=steps)

    params = [p for g in optimizer.param_groups for p in g["params"]]
    max_log_scale = math.log(MAX_LOGIT_SCALE)
    t_start = time.perf_counter()
    step = start
    finished = True
    window: list[float] = []
    attention_window: list[float] = []  # --attend-objects: the pool weights' cross-entropy against the boxes
    refused: dict[str, str] = {}
    seen_images = 0
    last_eval = next((h["eval"] for h in reversed(history) if "eval" in h), None)
    log_every = max(1, min(50, opts.eval_every // 5))

    def summary() -> dict[str, Any]:
        return {
            "options": asdict(opts),
            "step": step,
            "steps": steps,
            "eval": last_eval,
            "elapsed_s": round(elapsed_before + time.perf_counter() - t_start, 1),
        }

    def log_window(rate: float) -> None:
        """Append the mean loss (and object-attention term) of the steps since the last entry."""
        nonlocal window, attention_window
        entry = {"step": step, "loss": float(np.mean(window)), "logit_scale": float(model.logit_scale.detach().exp()),
                 "lr": optimizer.param_groups[0]["lr"], "img_per_s": round(rate, 1)}  # fmt: skip
        if attention_window:  # --attend-objects: "loss" is the total, this the term it adds (before its weight)
            entry["object_attention"] = float(np.mean(attention_window))
        history.append(entry)
        window, attention_window = [], []
        if opts.progress:
            temperature = 1 / entry["logit_scale"]
            numbers = {k: v for k, v in entry.items() if k != "logit_scale"}
            report.message(f"step {step} of {steps}: loss {entry['loss']:.4f}, temperature {temperature:.4f}, {rate:.0f} img/s",
                           **numbers, steps=steps, temperature=temperature)  # fmt: skip

    def checkpoint() -> None:
        state = {"step": step, "options": asdict(opts), "history": history,
                 "elapsed_s": round(elapsed_before + time.perf_counter() - t_start, 1), "summary": summary()}  # fmt: skip
        _save_checkpoint(model, optimizer, out, state, transformers_bars)
        save_model(model, out, training=summary(), transformers_bars=transformers_bars)
        _write_history(out, history)
        plot_curves(history, out / CURVES_FILE)

    def evaluate() -> None:
        nonlocal last_eval
        if eval_set is None:
            return
        last_eval = eval_set.run(model, text_inputs)
        history.append({"step": step, "eval": last_eval})
        t2i, i2t = last_eval["text_to_image"], last_eval["image_to_text"]
        vectors = last_eval.get("text_to_image_vectors")
        how = f" (grid re-rank, as search; vectors alone R@10 {vectors['R@10']:.3f})" if vectors else ""
        report.message(
            f"step {step}: eval text->image R@1 {t2i['R@1']:.3f} R@5 {t2i['R@5']:.3f} R@10 {t2i['R@10']:.3f}{how} | "
            f"image->text R@1 {i2t['R@1']:.3f} R@5 {i2t['R@5']:.3f} R@10 {i2t['R@10']:.3f}",
            step=step, eval=last_eval,
        )  # fmt: skip

    if opts.progress:
        report.total(steps)
        report.advance(start)  # a resumed run's bar starts where the checkpoint stopped
    model.train()
    batches = iterate_batches(source, start, steps, opts.workers)
    t_seen = time.perf_counter()
    try:
        for batch in batches:
            for g in optimizer.param_groups:
                g["lr"] = opts.lr * lr_factor(step, steps, warmup)
            refused.update(batch.refused)
            pixels = torch.from_numpy(batch.pixels).to(device)
            if opts.attend_objects:
                pooled, cells, weights = model.image.pool_with_weights(pixels)
                img = torch.nn.functional.normalize(pooled, dim=-1)
            else:
                img = model.encode_image(pixels)
            txt = model.encode_text(text_inputs(batch.captions))
            targets = torch.from_numpy(batch.targets).to(device)
            loss = contrastive_loss(img, txt, model.logit_scale, targets, batch.n_pairs)
            if opts.attend_objects:
                where = object_attention_loss(weights, box_cell_targets(batch.boxes, cells.shape[-1]).to(device))
                attention_window.append(float(where.detach()))
                loss = loss + opts.attend_objects * where
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0.0, max_log_scale)
            step += 1
            seen_images += len(batch.pixels)
            window.append(float(loss.detach()))
            rate = seen_images / max(1e-9, time.perf_counter() - t_seen)
            if opts.progress:
                report.advance(1)
            if step % log_every == 0 or step == steps:
                log_window(rate)
            if step % opts.eval_every == 0 and step < steps:
                t_pause = time.perf_counter()
                evaluate()
                checkpoint()
                t_seen += time.perf_counter() - t_pause  # the img/s rate counts training time only
            if opts.minutes is not None and time.perf_counter() - t_run > opts.minutes * 60 and step < steps:
                finished = False
                report.message(f"time limit of {opts.minutes} minutes reached at step {step} of {steps}; --resume continues",
                               step=step, steps=steps)  # fmt: skip
                break
    finally:
        batches.close()  # stops the worker processes now, even when the time limit broke the loop
    rate = seen_images / max(1e-9, time.perf_counter() - t_seen)
    if window:
        log_window(rate)
    if not any("eval" in h and h["step"] == step for h in history):
        evaluate()
    checkpoint()
    losses = [h["loss"] for h in history if "loss" in h]
    if refused:
        report.message(
            f"{len(refused)} training images could not be decoded and were skipped, e.g. {next(iter(refused.items()))}",
            skipped=len(refused),
        )
    report.done()
    return TrainResult(
        out, step, steps, finished and step >= steps, losses[-1] if losses else None, last_eval, rate, history
    )
