"""Model backends and the registry: parity with the reference libraries on tiny random models.

Tolerance: 1e-5 max absolute difference on unit vectors, CPU, fp32, seeded weights.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch.errors import EmptyText, ModelNotAvailable
from clipsearch.models.base import Preprocess, cosine_similarity
from clipsearch.models.hub import offline_message
from clipsearch.models.preprocess import to_pixel_values
from clipsearch.models.registry import DEFAULT_MODEL, clear_cache, describe, load_model

TOL = 1e-5
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# (width, height): square, tall, wide, barely larger than the crop, much larger, smaller than the
# crop (upscaled), and 100x37 -> 81x30, where floor and round crop offsets differ by one pixel.
SIZES = [(30, 30), (47, 83), (83, 47), (31, 30), (100, 37), (300, 200), (1000, 29), (7, 5), (64, 48)]


def random_images(sizes=SIZES, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for (w, h) in sizes]


def smooth_image(w: int, h: int) -> Image.Image:
    """A gradient with a disc: closer to a photo than noise, so resampling filters matter less."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = ((xx - w / 3) ** 2 + (yy - h / 2) ** 2) < (min(w, h) / 4) ** 2
    arr = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), r * 255], axis=-1)
    return Image.fromarray(arr.astype(np.uint8))


def unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


TEXTS = [
    "a photo of a cat",
    "A DOG!",
    "two red squares and a blue circle on a white background",
    "x",
    " ".join(["word"] * 200),
]


# -- preprocessing ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "size,crop,resample,mean,std",
    [
        (30, 30, 3, OPENAI_MEAN, OPENAI_STD),
        (34, 30, 2, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        (224, 224, 3, OPENAI_MEAN, OPENAI_STD),
        (20, 30, 3, OPENAI_MEAN, OPENAI_STD),  # resized smaller than the crop: padded with black
    ],
)
def test_to_pixel_values_equals_clip_image_processor_pil(size, crop, resample, mean, std):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    names = {2: "bilinear", 3: "bicubic"}
    ref = CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": crop, "width": crop}, resample=resample,
        image_mean=list(mean), image_std=list(std),
    )
    p = Preprocess(size=size, crop=crop, mean=mean, std=std, interpolation=names[resample])
    for img in random_images() + [smooth_image(640, 480), random_images([(50, 40)])[0].convert("L")]:
        expected = ref(images=img, return_tensors="np")["pixel_values"][0]
        got = to_pixel_values(img, p)
        assert got.shape == (3, crop, crop) and got.dtype == np.float32
        assert np.abs(got - expected).max() <= 1e-6, img.size


def test_to_pixel_values_with_round_crop_equals_open_clip_transform():
    from open_clip.transform import image_transform

    for interpolation in ("bicubic", "bilinear"):
        tf = image_transform(30, is_train=False, interpolation=interpolation)
        p = Preprocess(size=30, crop=30, interpolation=interpolation)
        for img in random_images():
            expected = tf(img).numpy()
            assert np.abs(to_pixel_values(img, p, crop_rounding="round") - expected).max() <= 1e-6, img.size
    # Why crop_rounding exists: 100x37 resizes to 81x30, and (81 - 30) / 2 = 25.5 floors to 25
    # (transformers) but rounds to 26 (torchvision).
    img = random_images([(100, 37)])[0]
    tf = image_transform(30, is_train=False)
    assert np.abs(to_pixel_values(img, Preprocess(size=30, crop=30)) - tf(img).numpy()).max() > 0.1


def test_to_pixel_values_squash_resizes_to_the_crop():
    img = random_images([(90, 30)])[0]
    p = Preprocess(size=30, crop=30, resize_mode="squash")
    expected = np.asarray(img.resize((30, 30), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    expected = (expected - np.array(OPENAI_MEAN, np.float32)) / np.array(OPENAI_STD, np.float32)
    assert np.abs(to_pixel_values(img, p) - expected.transpose(2, 0, 1)).max() <= 1e-6


def test_to_pixel_values_rejects_unknown_settings():
    img = random_images([(40, 40)])[0]
    with pytest.raises(ValueError, match=re.escape(
        "unknown interpolation 'cubic'; use one of nearest, box, bilinear, hamming, bicubic, lanczos"
    )):
        to_pixel_values(img, Preprocess(size=30, crop=30, interpolation="cubic"))
    with pytest.raises(ValueError, match=re.escape("unknown resize_mode 'longest'; use one of shortest, squash")):
        to_pixel_values(img, Preprocess(size=30, crop=30, resize_mode="longest"))


def test_preprocess_module_does_not_import_torch():
    code = "import sys, clipsearch.models.preprocess; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- Hugging Face CLIP -----------------------------------------------------------------------
def hf_reference(folder: Path):
    """The reference pipeline: CLIPProcessor with the PIL backend + CLIPModel."""
    from transformers import CLIPModel, CLIPProcessor

    return (
        CLIPProcessor.from_pretrained(folder, local_files_only=True, backend="pil"),
        CLIPModel.from_pretrained(folder, local_files_only=True).eval(),
    )


def pooled(out):
    return out if not hasattr(out, "pooler_output") else out.pooler_output


@pytest.mark.parametrize("fixture", ["tiny_hf_clip", "tiny_hf_clip_alt"])
def test_hf_clip_image_vectors_equal_reference(fixture, request):
    import torch

    folder = request.getfixturevalue(fixture)
    enc = load_model(str(folder))
    processor, model = hf_reference(folder)
    images = random_images() + [smooth_image(640, 480), smooth_image(333, 500)]
    with torch.inference_mode():
        ref = unit(pooled(model.get_image_features(**processor(images=images, return_tensors="pt"))).numpy())
    got = enc.encode_images(images, batch_size=4)
    assert got.shape == (len(images), 16) and got.dtype == np.float32
    assert np.abs(got - ref).max() <= TOL
    pixels = enc.preprocess_images(images)  # the worker-process path gives the same vectors
    assert np.abs(enc.encode_pixel_values(pixels) - ref).max() <= TOL


def test_hf_clip_text_vectors_equal_reference(tiny_hf_clip):
    import torch

    enc = load_model(str(tiny_hf_clip))
    processor, model = hf_reference(tiny_hf_clip)
    tok = processor.tokenizer(TEXTS, padding="max_length", truncation=True, max_length=40, return_tensors="pt")
    with torch.inference_mode():
        ref = unit(pooled(model.get_text_features(**tok)).numpy())
    got = enc.encode_texts(TEXTS, batch_size=2)
    assert got.shape == (len(TEXTS), 16)
    assert np.abs(got - ref).max() <= TOL


def test_hf_clip_longest_padding_equals_full_context_padding(tiny_hf_clip):
    import torch

    enc = load_model(str(tiny_hf_clip))
    short = TEXTS[:4]
    longest, full = enc.tokenize(short), enc.tokenize(short, padding="max_length")
    assert longest["input_ids"].shape[1] < full["input_ids"].shape[1] == 40
    with torch.inference_mode():
        a = pooled(enc.model.get_text_features(**longest)).numpy()
        b = pooled(enc.model.get_text_features(**full)).numpy()
    assert np.abs(unit(a) - unit(b)).max() <= TOL


def test_hf_clip_truncation_keeps_eos_last_and_is_counted(tiny_hf_clip):
    enc = load_model(str(tiny_hf_clip))
    long_text = " ".join(f"word{i}" for i in range(200))
    ids = enc.tokenize([long_text, "a cat"])["input_ids"]
    eos = enc.tokenizer.eos_token_id
    assert ids.shape[1] == enc.info.context_length == 40
    assert ids[0, -1].item() == eos and ids[0, 0].item() == enc.tokenizer.bos_token_id
    assert (ids[0] == eos).sum().item() == 1  # the only EOS is the last token
    assert enc.count_truncated([long_text, "a cat", TEXTS[4]]) == 2
    assert enc.count_truncated(["a cat"]) == 0
    # The vector of the long text is the vector of its first 38 word tokens + BOS + EOS.
    body = enc.tokenizer(long_text, add_special_tokens=False)["input_ids"][:38]
    kept = enc.tokenizer.decode(body)
    assert np.abs(enc.encode_texts([long_text]) - enc.encode_texts([kept])).max() <= TOL


def test_hf_clip_info(tiny_hf_clip, tiny_hf_clip_alt):
    enc = load_model(str(tiny_hf_clip))
    info = enc.info
    assert (info.backend, info.dim, info.modalities, info.context_length) == ("hf_clip", 16, ("image", "text"), 40)
    assert info.name == str(tiny_hf_clip.resolve())
    assert info.preprocess == Preprocess(size=30, crop=30, mean=OPENAI_MEAN, std=OPENAI_STD, interpolation="bicubic")
    assert info.logit_scale == pytest.approx(np.exp(2.6592), rel=1e-6)  # CLIPConfig's logit_scale_init_value
    alt = load_model(str(tiny_hf_clip_alt)).info.preprocess
    assert alt == Preprocess(size=34, crop=30, mean=(0.5,) * 3, std=(0.25,) * 3, interpolation="bilinear")


def test_empty_text_is_refused(tiny_hf_clip, tiny_sbert):
    for folder in (tiny_hf_clip, tiny_sbert):
        enc = load_model(str(folder))
        with pytest.raises(EmptyText, match=re.escape("text #1 is empty; give at least one non-space character")):
            enc.encode_texts(["fine", " \n\t"])


# -- open_clip -------------------------------------------------------------------------------
def open_clip_reference(tiny):
    import open_clip

    model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{tiny.folder}")
    return model.eval(), transform, open_clip.get_tokenizer(f"local-dir:{tiny.folder}")


def test_open_clip_image_vectors_equal_reference(tiny_open_clip):
    import torch

    enc = load_model(str(tiny_open_clip.folder))
    model, transform, _ = open_clip_reference(tiny_open_clip)
    images = random_images() + [smooth_image(640, 480)]
    with torch.inference_mode():
        ref = unit(model.encode_image(torch.stack([transform(im) for im in images])).numpy())
    got = enc.encode_images(images, batch_size=4)
    assert got.shape == (len(images), 16)
    assert np.abs(got - ref).max() <= TOL


def test_open_clip_text_vectors_equal_reference_on_full_context(tiny_open_clip):
    import torch

    enc = load_model(str(tiny_open_clip.folder))
    model, _, tokenizer = open_clip_reference(tiny_open_clip)
    tokens = tokenizer(TEXTS)
    assert tokens.shape == (len(TEXTS), 77)
    with torch.inference_mode():
        ref = unit(model.encode_text(tokens).numpy())
        assert enc.trims_text
        short = tokenizer(TEXTS[:4])
        assert enc.trim(short).shape[1] == int((short != 0).sum(dim=1).max()) == 13  # longest text, not 77
        trimmed = unit(enc.encode_tokens_trimmed(tokenizer(TEXTS[:4])).numpy())
    assert np.abs(trimmed - ref[:4]).max() <= TOL
    got = enc.encode_texts(TEXTS, batch_size=2)
    assert np.abs(got - ref).max() <= TOL


def test_open_clip_truncation_keeps_eos_last_and_is_counted(tiny_open_clip):
    enc = load_model(str(tiny_open_clip.folder))
    long_text = " ".join(f"word{i}" for i in range(200))
    tokens = enc.tokenizer([long_text])
    assert tokens.shape[1] == 77 and tokens[0, -1].item() == enc.tokenizer.eot_token_id
    assert enc.count_truncated([long_text, "a cat", TEXTS[4]]) == 2
    # 75 word tokens + SOT + EOT fit exactly; 76 do not.
    assert enc.count_truncated([" ".join(["word"] * 75), " ".join(["word"] * 76)]) == 1


def test_open_clip_arch_with_weights_file(tiny_open_clip):
    name = f"open_clip:{tiny_open_clip.arch}"
    enc = load_model(name, weights=str(tiny_open_clip.weights))
    folder_enc = load_model(str(tiny_open_clip.folder))
    info = enc.info
    assert (info.name, info.backend, info.dim, info.context_length) == (name, "open_clip", 16, 77)
    assert info.modalities == ("image", "text")
    assert info.logit_scale == pytest.approx(np.exp(2.5), rel=1e-6)
    # No preprocess config beside a bare checkpoint: open_clip's defaults for the architecture.
    assert info.preprocess == Preprocess(
        size=30, crop=30, mean=OPENAI_MEAN, std=OPENAI_STD, interpolation="bicubic", crop_rounding="round"
    )
    # The folder's open_clip_config.json says bilinear, mean 0.5, std 0.25.
    assert folder_enc.info.preprocess == Preprocess(
        size=30, crop=30, mean=(0.5,) * 3, std=(0.25,) * 3, interpolation="bilinear", crop_rounding="round"
    )
    assert np.abs(enc.encode_texts(TEXTS) - folder_enc.encode_texts(TEXTS)).max() <= TOL


def test_open_clip_cached_pretrained_tag_loads_without_download(tiny_open_clip, hf_cache_dir, monkeypatch):
    import open_clip.pretrained

    repo = "clipsearch-test/tiny-open-clip"
    snapshot = hf_cache_dir / "models--clipsearch-test--tiny-open-clip" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot.parents[1] / "refs").mkdir(exist_ok=True)
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    (snapshot / "open_clip_model.safetensors").write_bytes(tiny_open_clip.weights.read_bytes())
    tag_cfg = {"hf_hub": f"{repo}/", "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.25,) * 3}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, tiny_open_clip.arch, {"cached": tag_cfg})
    name = f"open_clip:{tiny_open_clip.arch}/cached"
    enc = load_model(name)
    assert enc.info.extra["pretrained"] == "cached"
    assert enc.info.preprocess.interpolation == "bilinear" and enc.info.preprocess.mean == (0.5,) * 3
    ref = load_model(str(tiny_open_clip.folder))
    images = random_images()[:3]
    assert np.abs(enc.encode_images(images) - ref.encode_images(images)).max() <= TOL
    with pytest.raises(ModelNotAvailable, match=re.escape(
        f"unknown pretrained tag 'nope' for open_clip architecture {tiny_open_clip.arch!r}; known tags: cached"
    )):
        load_model(f"open_clip:{tiny_open_clip.arch}/nope")


def test_open_clip_errors(tiny_open_clip, tmp_path):
    import torch

    arch = tiny_open_clip.arch
    name = "open_clip:ViT-B-32/openai"
    with pytest.raises(ModelNotAvailable, match=re.escape(offline_message(name))):
        load_model(name)
    with pytest.raises(ModelNotAvailable, match=re.escape(
        "unknown open_clip architecture 'ViT-B-33' in 'open_clip:ViT-B-33/openai': did you mean "
    )):
        load_model("open_clip:ViT-B-33/openai")
    usage = "use 'open_clip:ARCH/PRETRAINED' (e.g. 'open_clip:ViT-B-32/openai') or 'open_clip:ARCH' with weights=FILE"
    for bad in ("open_clip:", "open_clip:a/b/c", "open_clip:ViT-B-32/"):
        with pytest.raises(ModelNotAvailable, match=re.escape(f"malformed open_clip model name {bad!r}: {usage}")):
            load_model(bad)
    with pytest.raises(ModelNotAvailable, match=re.escape(f"open_clip model 'open_clip:{arch}' names no weights: {usage}")):
        load_model(f"open_clip:{arch}")
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(ModelNotAvailable, match=re.escape(
        f"weights file {str(missing.resolve())!r} for 'open_clip:{arch}' does not exist"
    )):
        load_model(f"open_clip:{arch}", weights=str(missing))
    with pytest.raises(ModelNotAvailable, match=re.escape(
        "open_clip model 'open_clip:ViT-B-32/openai' names a pretrained tag; give a tag or weights=FILE, not both"
    )):
        load_model("open_clip:ViT-B-32/openai", weights=str(tiny_open_clip.weights))
    # A pickle that needs arbitrary code is refused, never unpickled.
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"state_dict": types.SimpleNamespace(x=1)}, unsafe)
    with pytest.raises(ModelNotAvailable, match=re.escape(
        f"weights file {str(unsafe.resolve())!r} for 'open_clip:{arch}' cannot be loaded safely (it needs unpickling): use safetensors"
    )):
        load_model(f"open_clip:{arch}", weights=str(unsafe))


# -- sentence-transformers -------------------------------------------------------------------
def test_sbert_vectors_equal_sentence_transformers(tiny_sbert):
    from sentence_transformers import SentenceTransformer

    enc = load_model(str(tiny_sbert))
    ref = SentenceTransformer(str(tiny_sbert), device="cpu").encode(TEXTS, normalize_embeddings=True)
    got = enc.encode_texts(TEXTS, batch_size=2)
    assert got.shape == (len(TEXTS), 32)
    assert np.abs(got - ref).max() <= TOL
    assert np.abs(enc.encode_texts(TEXTS, role="passage") - ref).max() <= TOL  # no prompts saved


def test_sbert_info_truncation_and_no_images(tiny_sbert):
    enc = load_model(str(tiny_sbert))
    info = enc.info
    assert (info.backend, info.dim, info.modalities, info.context_length) == ("sentence_transformers", 32, ("text",), 24)
    assert info.preprocess is None and info.logit_scale == 20.0
    assert "MultipleNegativesRankingLoss" in info.extra["logit_scale_source"]
    assert enc.count_truncated([" ".join(["word"] * 22), " ".join(["word"] * 23), TEXTS[4]]) == 2  # + [CLS] [SEP]
    with pytest.raises(ValueError, match=re.escape(f"model {info.name!r} embeds text only; it cannot embed images")):
        enc.encode_images(random_images()[:1])


def test_minilm_equals_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from clipsearch.models.sbert import minilm_folder

    enc = load_model("minilm")
    info = enc.info
    assert (info.name, info.backend, info.dim, info.modalities, info.context_length) == (
        "minilm", "sentence_transformers", 384, ("text",), 256
    )
    ref = SentenceTransformer(str(minilm_folder()), device="cpu").encode(TEXTS, normalize_embeddings=True)
    assert np.abs(enc.encode_texts(TEXTS) - ref).max() <= TOL
    assert enc.count_truncated(TEXTS) == 0


def test_minilm_finds_the_paraphrase():
    enc = load_model("minilm")
    query = "flying, stinging insects rebelled against their matriarch"
    candidates = [
        "the stock market closed higher on friday",
        "preheat the oven to 200 degrees before baking the bread",
        "the bees decided to have a mutiny against their queen",
        "the train to the airport leaves every twenty minutes",
        "he repainted the fence a pale shade of green",
        "a new species of deep-sea fish was described last year",
        "the violin concerto ended with a long cadenza",
    ]
    sims = cosine_similarity(enc.encode_texts([query]), enc.encode_texts(candidates, role="passage"))[0]
    assert candidates[int(np.argmax(sims))] == "the bees decided to have a mutiny against their queen"


# -- registry --------------------------------------------------------------------------------
def test_hub_name_not_cached_fails_with_one_sentence():
    for name in (DEFAULT_MODEL, "sentence-transformers/all-mpnet-base-v2"):
        with pytest.raises(ModelNotAvailable) as err:
            load_model(name)
        assert str(err.value) == (
            f"model {name!r} is not in the local Hugging Face cache and downloads are off (HF_HUB_OFFLINE=1): "
            f"copy it with `hf download {name}` on a machine with internet, or use a local model folder, "
            "'minilm' (text only) or 'demo'"
        )


def test_cached_hub_id_loads_from_the_local_cache(tiny_hf_clip, hf_cache_dir):
    import shutil

    repo = "clipsearch-test/tiny-hf-clip"
    snapshot = hf_cache_dir / "models--clipsearch-test--tiny-hf-clip" / "snapshots" / ("1" * 40)
    shutil.copytree(tiny_hf_clip, snapshot, dirs_exist_ok=True)
    (snapshot.parents[1] / "refs").mkdir(exist_ok=True)
    (snapshot.parents[1] / "refs" / "main").write_text("1" * 40)
    enc = load_model(repo)
    assert (enc.info.name, enc.info.backend) == (repo, "hf_clip")
    ref = load_model(str(tiny_hf_clip))
    assert np.abs(enc.encode_texts(TEXTS) - ref.encode_texts(TEXTS)).max() <= TOL


def test_unknown_and_malformed_names(tmp_path):
    options = "use a local model folder, 'minilm' (text only) or 'demo'"
    cases = {
        "not a model!": f"unknown model name 'not a model!': {options}, a Hugging Face Hub id such as "
        f"{DEFAULT_MODEL!r}, or 'open_clip:ARCH/PRETRAINED'",
        "": f"model name '' is empty: give a model name, {options}",
        "./no/such/folder": "model folder './no/such/folder' does not exist",
    }
    for name, message in cases.items():
        with pytest.raises(ModelNotAvailable) as err:
            load_model(name)
        assert str(err.value) == message
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelNotAvailable) as err:
        load_model(str(tmp_path))
    assert str(err.value) == (
        f"model folder {str(tmp_path)!r} holds no model clipsearch can load (config.json with model_type 'bert'): "
        "expected clipsearch_model.json, modules.json, open_clip_config.json, or config.json with model_type "
        "'clip' or 'dpr'"
    )
    with pytest.raises(ModelNotAvailable) as err:
        load_model("minilm", weights=str(tmp_path / "w.safetensors"))
    assert str(err.value) == "weights=FILE only goes with 'open_clip:ARCH' model names, not 'minilm'"


def test_demo_dual_and_dpr_dispatch(tmp_path, monkeypatch):
    clear_cache()
    calls = []
    fake_demo = types.SimpleNamespace(load_demo=lambda device: calls.append(("demo", device)) or "DEMO")
    fake_dual = types.SimpleNamespace(
        load_dual=lambda folder, name=None, device="?": calls.append(("dual", folder, device)) or "DUAL"
    )
    fake_dpr = types.SimpleNamespace(
        load_dpr=lambda src, name=None, device="?": calls.append(("dpr", src, device)) or "DPR"
    )
    monkeypatch.setitem(sys.modules, "clipsearch.models.demo", fake_demo)
    monkeypatch.setitem(sys.modules, "clipsearch.models.dual", fake_dual)
    monkeypatch.setitem(sys.modules, "clipsearch.models.dpr", fake_dpr)
    dual, dpr, pair = tmp_path / "dual", tmp_path / "dpr", tmp_path / "pair"
    for sub in (dual, dpr, pair / "question_encoder", pair / "ctx_encoder"):
        sub.mkdir(parents=True)
    (dual / "clipsearch_model.json").write_text("{}")
    for cfg in (dpr, pair / "question_encoder", pair / "ctx_encoder"):
        (cfg / "config.json").write_text(json.dumps({"model_type": "dpr"}))
    try:
        assert load_model("demo") == "DEMO"
        assert load_model(str(dual)) == "DUAL"
        assert load_model(str(dpr)) == "DPR"
        assert load_model(str(pair)) == "DPR"
        assert load_model("dpr:q,c") == "DPR"
        assert calls == [
            ("demo", "cpu"), ("dual", dual, "cpu"), ("dpr", dpr, "cpu"), ("dpr", pair, "cpu"), ("dpr", "dpr:q,c", "cpu")
        ]  # fmt: skip
    finally:
        clear_cache()


def test_models_are_cached_per_name_and_describe(tiny_sbert):
    clear_cache()
    a = load_model(str(tiny_sbert))
    assert load_model(str(tiny_sbert)) is a
    clear_cache()
    b = load_model(str(tiny_sbert))
    assert b is not a
    d = describe(b)
    json.dumps(d)  # JSON-ready
    assert (d["backend"], d["dim"], tuple(d["modalities"]), d["context_length"], d["preprocess"]) == (
        "sentence_transformers", 32, ("text",), 24, None
    )


def test_folder_without_weights_is_a_clear_error(tiny_hf_clip, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_hf_clip, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelNotAvailable) as err:
        load_model(str(broken))
    assert str(err.value).startswith(f"model {str(broken.resolve())!r} cannot be loaded from {str(broken.resolve())!r}: ")
    assert "\n" not in str(err.value)


def test_device_names_resolve_or_say_what_to_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """cpu by default; $CLIPSEARCH_DEVICE or an argument picks another; a GPU that is not
    there is an error naming the choices, never a silent fall back."""
    import torch

    from clipsearch.models.device import DEVICE_ENV, DeviceUnavailable, resolve_device

    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert resolve_device() == "cpu" and resolve_device(" CPU ") == "cpu"
    auto = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto") == auto
    monkeypatch.setenv(DEVICE_ENV, "auto")
    assert resolve_device() == auto and resolve_device("cpu") == "cpu"  # the argument wins
    with pytest.raises(DeviceUnavailable, match=re.escape("unknown device 'gpu'; use cpu, cuda, cuda:N, mps or auto")):
        resolve_device("gpu")
    monkeypatch.setenv(DEVICE_ENV, "cuda:x")
    with pytest.raises(DeviceUnavailable, match=re.escape("unknown $CLIPSEARCH_DEVICE='cuda:x'")):
        resolve_device()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailable, match="torch sees no CUDA GPU on this machine; use cpu or auto"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(DeviceUnavailable, match=re.escape("this machine has 2 CUDA GPU(s), numbered from 0")):
        resolve_device("cuda:2")


def test_load_model_refuses_a_missing_gpu_before_loading(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The device is checked first: a model that could not load anyway says so only after."""
    import torch

    from clipsearch.models.device import DeviceUnavailable

    clear_cache()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CLIPSEARCH_DEVICE", "cuda")
    for name in ("demo", str(tmp_path / "no-such-model")):
        with pytest.raises(DeviceUnavailable, match="no CUDA GPU"):
            load_model(name)
    monkeypatch.delenv("CLIPSEARCH_DEVICE")
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        load_model(str(tmp_path / "no-such-model"))


def test_the_device_reaches_each_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """$CLIPSEARCH_DEVICE resolved once, handed to the backend that loads the folder."""
    import torch

    import clipsearch.models.hf_clip as hf_clip
    import clipsearch.models.openclip as openclip
    import clipsearch.models.sbert as sbert

    clear_cache()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CLIPSEARCH_DEVICE", "auto")
    seen = []
    for mod, attr in ((sbert, "load_sbert"), (openclip, "load_open_clip_dir"), (hf_clip, "load_hf_clip")):
        monkeypatch.setattr(mod, attr, lambda folder, name, device, _a=attr: seen.append((_a, device)) or _a)
    folders = {"sbert": "modules.json", "openclip": "open_clip_config.json", "hf": "config.json"}
    for sub, file in folders.items():
        (tmp_path / sub).mkdir()
        (tmp_path / sub / file).write_text(json.dumps({"model_type": "clip"}))
    try:
        for sub in folders:
            load_model(str(tmp_path / sub))
        assert seen == [("load_sbert", "cuda"), ("load_open_clip_dir", "cuda"), ("load_hf_clip", "cuda")]
    finally:
        clear_cache()
