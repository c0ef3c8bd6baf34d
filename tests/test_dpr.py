"""DPR dual encoder: names, roles, parity with transformers, offline errors, cosine retrieval."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from clipsearch.errors import ModelNotAvailable
from clipsearch.models.dpr import (
    DEFAULT_CTX_ENCODER,
    DEFAULT_QUESTION_ENCODER,
    DPREncoder,
    load_dpr,
    looks_like_dpr,
    parse_dpr_name,
)
from clipsearch.tasks.qa import MemoryRetriever
from clipsearch.text.passages import split_passages
from qa_tiny_models import save_tiny_dpr, tiny_tokenizer, train_tiny_dpr

PAIRS = [
    ("what is the capital of australia?", "canberra is the capital city of australia."),
    ("who wrote hamlet?", "hamlet is a tragedy written by william shakespeare."),
    ("how many legs does a spider have?", "spiders have eight legs and two body segments."),
    ("what is the boiling point of water?", "water boils at one hundred degrees celsius at sea level."),
    ("which planet is known as the red planet?", "mars is often called the red planet because of iron oxide."),
    ("what do bees make?", "honey bees make honey from the nectar of flowers."),
]


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    return save_tiny_dpr(tmp_path_factory.mktemp("dpr"), seed=0)


def _normalised(x: torch.Tensor) -> np.ndarray:
    x = x.detach().float().numpy()
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_pair_folder_roles_match_transformers(tiny_pair):
    from transformers import DPRContextEncoder, DPRQuestionEncoder

    enc = load_dpr(str(tiny_pair))
    assert isinstance(enc, DPREncoder)
    info = enc.info
    assert (info.name, info.backend, info.dim, info.modalities, info.context_length, info.preprocess) == (
        str(tiny_pair),
        "dpr",
        32,
        ("text",),
        512,
        None,
    )
    assert info.extra["question_encoder"] == str(tiny_pair / "question_encoder")
    assert info.extra["ctx_encoder"] == str(tiny_pair / "ctx_encoder")

    texts = ["where is canberra?", "a much longer passage about the capital of australia and its lake."]
    tok = tiny_tokenizer()
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        q_ref = _normalised(DPRQuestionEncoder.from_pretrained(tiny_pair / "question_encoder")(**batch).pooler_output)
        c_ref = _normalised(DPRContextEncoder.from_pretrained(tiny_pair / "ctx_encoder")(**batch).pooler_output)
    q = enc.encode_texts(texts, role="query")
    c = enc.encode_texts(texts, role="passage")
    assert q.shape == c.shape == (2, 32) and q.dtype == np.float32
    np.testing.assert_allclose(q, q_ref, atol=1e-5)
    np.testing.assert_allclose(c, c_ref, atol=1e-5)
    assert np.abs(q - c).max() > 0.1  # two different encoders
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)


def test_name_forms_record_the_name(tiny_pair):
    q, c = str(tiny_pair / "question_encoder"), str(tiny_pair / "ctx_encoder")
    assert load_dpr(f"dpr:{q},{c}").name == f"dpr:{q},{c}"
    two = load_dpr(q, c)
    assert two.name == f"dpr:{q},{c}"
    assert load_dpr(str(tiny_pair), name="my-dpr").name == "my-dpr"
    # one DPR folder on its own serves both roles
    single = load_dpr(q)
    v = single.encode_texts(["hello"], role="query")
    np.testing.assert_allclose(v, single.encode_texts(["hello"], role="passage"), atol=1e-6)
    np.testing.assert_allclose(v, two.encode_texts(["hello"], role="query"), atol=1e-6)


def test_parse_names():
    assert parse_dpr_name("dpr") == (DEFAULT_QUESTION_ENCODER, DEFAULT_CTX_ENCODER)
    assert parse_dpr_name("dpr:a/q, b/c") == ("a/q", "b/c")
    assert parse_dpr_name("dpr:facebook/dpr-question_encoder-multiset-base") == (
        "facebook/dpr-question_encoder-multiset-base",
        "facebook/dpr-ctx_encoder-multiset-base",
    )
    assert parse_dpr_name("facebook/dpr-ctx_encoder-single-nq-base") == (DEFAULT_QUESTION_ENCODER, DEFAULT_CTX_ENCODER)
    with pytest.raises(ValueError, match=re.escape("'minilm' is not a DPR model name: use 'dpr', 'dpr:QUESTION,CTX'")):
        parse_dpr_name("minilm")
    assert looks_like_dpr("dpr") and looks_like_dpr("dpr:x,y") and looks_like_dpr(DEFAULT_QUESTION_ENCODER)
    assert not looks_like_dpr("minilm") and not looks_like_dpr("openai/clip-vit-base-patch32")


def test_folder_detection(tiny_pair, tmp_path):
    assert looks_like_dpr(str(tiny_pair)) and looks_like_dpr(str(tiny_pair / "ctx_encoder"))
    assert not looks_like_dpr(str(tmp_path))


def test_uncached_hub_model_fails_fast_in_one_sentence():
    with pytest.raises(ModelNotAvailable) as info:
        load_dpr("dpr")
    assert str(info.value) == (
        "model 'dpr' is not in the local Hugging Face cache and downloads are off (HF_HUB_OFFLINE=1): copy it "
        f"with `hf download {DEFAULT_QUESTION_ENCODER}` on a machine with internet, or use a local model folder, "
        "'minilm' (text only) or 'demo'"
    )


def test_swapped_folders_are_refused(tiny_pair, tmp_path):
    q, c = tiny_pair / "question_encoder", tiny_pair / "ctx_encoder"
    with pytest.raises(ModelNotAvailable, match=re.escape(f"{c} holds a DPRContextEncoder, not a DPRQuestionEncoder")):
        load_dpr(str(c), str(q))
    with pytest.raises(ModelNotAvailable, match=re.escape(f"{tmp_path} has no config.json with model_type 'dpr'")):
        load_dpr(str(tmp_path), str(c))


def test_token_count_drives_passage_splitting(tiny_pair):
    enc = load_dpr(str(tiny_pair))
    assert enc.count_tokens("canberra is a city") == 6  # [CLS] 4 words [SEP]
    text = " ".join(f"sentence {i} is about canberra." for i in range(200))
    passages = split_passages(text, max_tokens=enc.info.context_length, count_tokens=enc.count_tokens)
    assert len(passages) > 1
    assert enc.count_truncated([p.text for p in passages]) == 0
    assert enc.count_truncated([text]) == 1


def test_trained_dpr_still_ranks_the_right_passage_by_cosine(tmp_path):
    """Trained with DPR's loss on raw dot products; we search by cosine: the answer passage
    must still come first for every question. (DPR's vectors are the last layer's [CLS] state,
    after layer norm, so their lengths vary little and cosine ranks almost like dot product.)"""
    enc = load_dpr(str(train_tiny_dpr(tmp_path, PAIRS, steps=100, seed=0)))
    passages = [p for _, p in PAIRS]
    retriever = MemoryRetriever(enc, passages)
    for i, (question, _) in enumerate(PAIRS):
        hits = retriever.retrieve(question, k=3)
        assert hits[0].id == str(i), (question, [h.text for h in hits])
        assert hits[0].score > hits[1].score


def test_registry_dispatches_dpr_names(tiny_pair):
    from clipsearch.models.registry import load_model

    q, c = tiny_pair / "question_encoder", tiny_pair / "ctx_encoder"
    by_name = load_model(f"dpr:{q},{c}")
    assert (by_name.info.backend, by_name.name) == ("dpr", f"dpr:{q},{c}")
    pair = load_model(str(tiny_pair))
    assert (pair.info.extra["question_encoder"], pair.info.extra["ctx_encoder"]) == (str(q), str(c))


def _fake_hub_cache(cache, repo_id, folder):
    """Lay ``folder``'s files out as the Hugging Face cache holds a downloaded ``repo_id``."""
    import shutil

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)


def test_hub_names_load_from_the_local_cache_only(tiny_pair, tmp_path):
    """``dpr`` and the facebook ids resolve through the HF cache, pairing question and context."""
    import subprocess
    import sys

    cache = tmp_path / "hub"
    _fake_hub_cache(cache, DEFAULT_QUESTION_ENCODER, tiny_pair / "question_encoder")
    _fake_hub_cache(cache, DEFAULT_CTX_ENCODER, tiny_pair / "ctx_encoder")
    code = (
        "import json\n"
        "from clipsearch.models.registry import load_model\n"
        "out = {}\n"
        f"for name in ('dpr', {DEFAULT_QUESTION_ENCODER!r}):\n"
        "    enc = load_model(name)\n"
        "    out[name] = [enc.name, enc.info.extra['question_encoder'], enc.info.extra['ctx_encoder']]\n"
        "print(json.dumps(out))\n"
    )
    env = {**__import__("os").environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["dpr"] == ["dpr", DEFAULT_QUESTION_ENCODER, DEFAULT_CTX_ENCODER]
    name, question, ctx = out[DEFAULT_QUESTION_ENCODER]  # the registry hands over the cached snapshot
    assert name == DEFAULT_QUESTION_ENCODER
    assert question.startswith(str(cache / "models--facebook--dpr-question_encoder-single-nq-base" / "snapshots"))
    assert ctx.startswith(str(cache / "models--facebook--dpr-ctx_encoder-single-nq-base" / "snapshots"))
