"""Question answering: retrieve -> rerank -> read, the sentence fallback, evaluation, the CLI.

Tiny random models (built in tests/qa_tiny_models.py) exercise every code path; the real
all-MiniLM-L6-v2 weights (installed package) check that retrieval and the sentence fallback
find the right passage.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from clipsearch.errors import EmptyText, ModelNotAvailable, StoreError
from clipsearch.models.cross_encoder import load_reranker
from clipsearch.models.dpr import load_dpr
from clipsearch.models.reader import load_reader
from clipsearch.tasks.qa import (
    MemoryRetriever,
    QAExample,
    Retrieved,
    StoreRetriever,
    ask,
    evaluate_qa,
    exact_match,
    f1_score,
    is_hit,
    load_qa_examples,
    normalize_answer,
    open_retriever,
)
from clipsearch.tasks.reader import read, sentence_answer
from clipsearch.tasks.rerank import rerank
from clipsearch.text.passages import split_passages
from qa_tiny_models import (
    save_tiny_cross_encoder,
    save_tiny_dpr,
    save_tiny_qa,
    save_word_pointing_qa,
    tiny_tokenizer,
)

QUESTION = "What is the capital city of Australia?"
CANBERRA = (
    "Canberra is the capital city of Australia. It was chosen in 1908 as a compromise between "
    "Sydney and Melbourne, the two largest cities."
)
SYDNEY = (  # the distractor: mentions Australia and another capital
    "Sydney is the largest city in Australia and the capital of New South Wales. Its harbour bridge opened in 1932."
)
PARIS = "Paris is the capital of France. The Eiffel Tower was finished in 1889."
FILLER = "The quick brown fox jumps over the lazy dog near the old mill."  # 13 tokens
LONG = " ".join([FILLER] * 40 + ["Most visitors fly into Canberra airport."] + [FILLER] * 10)
REQUIRED_KEYS = {"question", "answer", "kind", "score", "passage", "source", "passages"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa-models")
    return {
        "dpr": save_tiny_dpr(root / "dpr", seed=1),
        "pointer": save_word_pointing_qa(root / "pointer", "canberra"),
        "random_qa": save_tiny_qa(root / "random-qa", seed=2),
        "cross": save_tiny_cross_encoder(root / "cross", seed=3),
    }


@pytest.fixture(scope="module")
def minilm():
    from clipsearch.models.registry import load_model

    return load_model("minilm")


# -- the full path with tiny random models -----------------------------------------------------


def test_full_path_retrieve_read_json_with_striding(models):
    document = f"{SYDNEY}\n\n{PARIS}\n\n{LONG}"
    passages = split_passages(document, max_tokens=1000, source="doc.txt")
    assert [p.text for p in passages] == [SYDNEY, PARIS, LONG]  # the long one is one passage
    retriever = MemoryRetriever(load_dpr(str(models["dpr"])), passages)
    reader = load_reader(str(models["pointer"]))

    result = ask(QUESTION, retriever, k=3, reader=reader, max_length=64, stride=16)
    out = json.loads(json.dumps(result.to_dict()))
    assert REQUIRED_KEYS <= out.keys()
    assert (out["question"], out["answer"], out["kind"], out["source"], out["passage"]) == (
        QUESTION,
        "Canberra",
        "span",
        "doc.txt",
        LONG,
    )
    assert 0.0 < out["score"] <= 1.0
    assert LONG[out["answer_start"] : out["answer_end"]] == "Canberra"
    hit = result.passage
    assert document[hit.start + out["answer_start"] : hit.start + out["answer_end"]] == "Canberra"
    assert len(tiny_tokenizer()(LONG)["input_ids"]) > 500  # far beyond one 64-token window
    assert result.answer.windows > 20  # the long passage was read in strided windows
    assert sorted(p["text"] for p in out["passages"]) == sorted([SYDNEY, PARIS, LONG])
    assert all({"id", "text", "score", "source", "start", "end"} <= p.keys() for p in out["passages"])
    assert out["models"]["reader"] == str(models["pointer"])


@pytest.mark.parametrize("where", [0, 25, 50])
@pytest.mark.parametrize("stride", [0, 16, 40])
def test_striding_finds_the_answer_in_any_window(models, where, stride):
    sentences = [FILLER] * 50
    sentences.insert(where, "Most visitors fly into Canberra airport.")
    long = " ".join(sentences)
    answer = read(QUESTION, [PARIS, long], load_reader(str(models["pointer"])), max_length=64, stride=stride)
    assert (answer.text, answer.passage_index) == ("Canberra", 1)
    assert long[answer.start : answer.end] == "Canberra"
    assert answer.kind == "span" and answer.windows > 10


def test_more_overlap_means_more_windows(models):
    reader = load_reader(str(models["pointer"]))
    windows = [read(QUESTION, [LONG], reader, max_length=64, stride=s).windows for s in (0, 20, 40)]
    assert windows[0] < windows[1] < windows[2]


def test_random_reader_returns_a_real_span(models):
    reader = load_reader(str(models["random_qa"]))
    answer = read(QUESTION, [CANBERRA, LONG], reader, max_answer_len=5, max_length=64, stride=16)
    text = [CANBERRA, LONG][answer.passage_index]
    assert text[answer.start : answer.end] == answer.text and answer.text
    assert len(tiny_tokenizer()(answer.text, add_special_tokens=False)["input_ids"]) <= 5
    assert 0.0 <= answer.score <= 1.0 and math.isfinite(answer.logit)


def test_padding_and_batching_do_not_change_the_answer(models):
    """Windows are sorted by length and padded per batch; one window per batch needs no padding."""
    reader = load_reader(str(models["random_qa"]))
    passages = [CANBERRA, LONG, PARIS, SYDNEY]
    batched = read(QUESTION, passages, reader, max_length=64, stride=16, batch_size=5)
    single = read(QUESTION, passages, reader, max_length=64, stride=16, batch_size=1)
    assert (batched.text, batched.passage_index, batched.start, batched.end) == (
        single.text,
        single.passage_index,
        single.start,
        single.end,
    )
    assert batched.logit == pytest.approx(single.logit, abs=1e-4)
    assert batched.score == pytest.approx(single.score, abs=1e-5)


def test_reader_errors(models, tmp_path):
    reader = load_reader(str(models["pointer"]))
    with pytest.raises(ValueError) as info:
        read(QUESTION, [LONG], reader, max_length=64, stride=60)
    assert str(info.value) == (
        "a 64-token window holds the 8-token question and 53 passage tokens, which must exceed the stride (60): "
        "shorten the question, lower the stride, or raise max_length"
    )
    with pytest.raises(EmptyText, match=re.escape("the question is empty; ask something")):
        read("  ", [LONG], reader)
    with pytest.raises(ValueError, match=re.escape("no passages to read: retrieve at least one")):
        read(QUESTION, [], reader)
    with pytest.raises(ModelNotAvailable) as info:
        load_reader("deepset/roberta-base-squad2")
    assert str(info.value) == (
        "model 'deepset/roberta-base-squad2' is not in the local Hugging Face cache and downloads are off "
        "(HF_HUB_OFFLINE=1): copy it with `hf download deepset/roberta-base-squad2` on a machine with internet, or "
        "use a local model folder, 'minilm' (text only) or 'demo'"
    )
    with pytest.raises(ModelNotAvailable, match=re.escape(f"reader model folder '{tmp_path}/nope' does not exist")):
        load_reader(f"{tmp_path}/nope")
    q_folder = models["dpr"] / "question_encoder"
    with pytest.raises(ModelNotAvailable) as info:
        load_reader(str(q_folder))
    assert str(info.value) == (
        f"reader model '{q_folder}' is not a question-answering model: transformers has no question-answering "
        "head for model type 'dpr'"
    )


# -- reranking --------------------------------------------------------------------------------


def test_rerank_scores_are_the_cross_encoders_and_sorted(models):
    from transformers import BertForSequenceClassification

    passages = [SYDNEY, PARIS, CANBERRA, LONG]
    ranked = rerank(QUESTION, passages, load_reranker(str(models["cross"])))
    assert sorted(i for i, _ in ranked) == [0, 1, 2, 3]
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True)
    model = BertForSequenceClassification.from_pretrained(models["cross"]).eval()
    batch = tiny_tokenizer()([QUESTION] * 4, passages, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        expected = torch.sigmoid(model(**batch).logits[:, 0]).numpy()
    np.testing.assert_allclose([s for _, s in sorted(ranked)], expected, atol=1e-5)


def test_ask_with_rerank_retrieves_three_k_candidates_and_keeps_k(models):
    passages = [f"{FILLER} number {i}." for i in range(8)] + [CANBERRA]
    retriever = MemoryRetriever(load_dpr(str(models["dpr"])), passages)
    reranker = load_reranker(str(models["cross"]))
    result = ask(QUESTION, retriever, k=2, reranker=reranker, reader=load_reader(str(models["pointer"])))
    assert len(result.passages) == 2
    candidates = retriever.retrieve(QUESTION, 6)
    best = rerank(QUESTION, candidates, reranker)[:2]
    assert [p.id for p in result.passages] == [candidates[i].id for i, _ in best]
    assert [p.rerank_score for p in result.passages] == pytest.approx([s for _, s in best])
    assert "rerank_score" in result.to_dict()["passages"][0]


def test_rerank_model_errors(tmp_path):
    with pytest.raises(
        ModelNotAvailable,
        match=re.escape(
            "model 'cross-encoder/ms-marco-MiniLM-L6-v2' is not in the local Hugging Face cache and downloads are off"
        ),
    ):
        load_reranker("cross-encoder/ms-marco-MiniLM-L6-v2")


# -- with real MiniLM weights -----------------------------------------------------------------


def test_minilm_ranks_the_canberra_passage_first(minilm):
    retriever = MemoryRetriever(minilm, [PARIS, SYDNEY, CANBERRA])
    hits = retriever.retrieve(QUESTION, k=3)
    assert [h.text for h in hits][0] == CANBERRA
    assert hits[0].score > hits[1].score


def test_sentence_answer_picks_the_canberra_sentence(minilm):
    answer = sentence_answer(QUESTION, [SYDNEY, CANBERRA, PARIS], minilm)
    assert (answer.text, answer.kind, answer.passage_index) == (
        "Canberra is the capital city of Australia.",
        "sentence",
        1,
    )
    assert CANBERRA[answer.start : answer.end] == answer.text
    result = ask(QUESTION, MemoryRetriever(minilm, [PARIS, SYDNEY, CANBERRA]), k=3)
    out = result.to_dict()
    assert (out["answer"], out["kind"], out["passage"]) == (
        "Canberra is the capital city of Australia.",
        "sentence",
        CANBERRA,
    )
    assert out["models"] == {"retriever": "minilm", "reader": None, "reranker": None}


# -- evaluation -------------------------------------------------------------------------------


def test_squad_normalisation_exact_match_and_f1():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple, a pear and the plum") == "apple pear and plum"
    assert exact_match("the Canberra", ["Sydney", "canberra."]) == 1.0
    assert exact_match("Canberra city", ["Canberra"]) == 0.0
    assert f1_score("in Paris France", ["Paris"]) == pytest.approx(0.5)  # P 1/3, R 1
    assert f1_score("Canberra", ["the Canberra region", "Sydney"]) == pytest.approx(2 / 3)  # P 1, R 1/2
    assert f1_score("Sydney", ["Canberra"]) == 0.0
    assert f1_score("the", ["a"]) == 1.0  # both normalise to nothing


class FixedRetriever:
    """Returns hand-picked passages per question, so the arithmetic is exact."""

    encoder = None

    def __init__(self, hits):
        self.hits = hits

    def retrieve(self, question, k):
        return self.hits[question][:k]


def test_evaluate_qa_arithmetic(models):
    c1 = Retrieved("c1", CANBERRA, 0.9)
    c2 = Retrieved("h2", "Tourists like the Canberra region in spring.", 0.8, metadata={"record": "#c2"})
    paris = Retrieved("p1", PARIS, 0.7, source="docs.jsonl#p1")
    retriever = FixedRetriever({"q1": [c1, c2], "q2": [paris, c2], "q3": [c1, c2]})
    examples = [
        QAExample("q1", ["Canberra"], "c1"),  # right at rank 1; reads "Canberra": EM 1, F1 1
        QAExample("q2", ["the Canberra region"]),  # answer found at rank 2; EM 0, F1 2/3
        QAExample("q3", ["Paris"], "p1"),  # p1 not retrieved; reads "Canberra": EM 0, F1 0
    ]
    reader = load_reader(str(models["pointer"]))
    metrics = evaluate_qa(examples, retriever, k=2, reader=reader)
    assert (metrics.n, metrics.k, metrics.n_read) == (3, 2, 3)
    assert metrics.top1 == pytest.approx(1 / 3)
    assert metrics.topk == pytest.approx(2 / 3)
    assert metrics.exact_match == pytest.approx(1 / 3)
    assert metrics.f1 == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert [r["rank"] for r in metrics.per_question] == [1, 2, None]
    assert [r["prediction"] for r in metrics.per_question] == ["Canberra"] * 3
    without_reader = evaluate_qa(examples, retriever, k=1)
    assert (without_reader.top1, without_reader.topk, without_reader.exact_match, without_reader.f1) == (
        pytest.approx(1 / 3),
        pytest.approx(1 / 3),
        None,
        None,
    )


def test_is_hit_by_id_record_source_or_answer():
    ex = QAExample("q", [], "c7")
    assert is_hit(Retrieved("c7", "x", 0), ex)
    assert is_hit(Retrieved("h", "x", 0, metadata={"record": "#c7"}), ex)
    assert is_hit(Retrieved("h", "x", 0, metadata={"id": "c7"}), ex)
    assert is_hit(Retrieved("h", "x", 0, source="docs.jsonl#c7"), ex)
    assert not is_hit(Retrieved("h", "x", 0, source="docs.jsonl#c70"), ex)
    by_answer = QAExample("q", ["New South Wales"])
    assert is_hit(Retrieved("h", SYDNEY, 0), by_answer)
    assert not is_hit(Retrieved("h", "Newer South Wales", 0), by_answer)  # whole words only


def test_load_qa_examples_and_its_errors(tmp_path):
    f = tmp_path / "qa.jsonl"
    f.write_text('{"question": "q1", "answers": ["a"], "context_id": 3}\n\n{"question": "q2", "answers": "b"}\n')
    assert load_qa_examples(f) == [QAExample("q1", ["a"], "3"), QAExample("q2", ["b"], None)]
    for line, msg in [
        ("nope", "not valid JSON (Expecting value)"),
        ('{"answers": ["a"]}', "'question' must be a non-empty string, not None"),
        ('{"question": "q", "answers": [1]}', "'answers' must be a list of strings, not [1]"),
        ('{"question": "q"}', "give 'answers' or 'context_id', or both; this line has neither"),
    ]:
        f.write_text('{"question": "ok", "answers": ["a"]}\n' + line + "\n")
        with pytest.raises(ValueError, match=re.escape(f"{f}:2: {msg}")):
            load_qa_examples(f)


# -- through the real store and the CLI -------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_store(tmp_path_factory, minilm):
    from clipsearch.collection import open_store

    root = tmp_path_factory.mktemp("qa-store")
    docs = root / "docs"
    docs.mkdir()
    (docs / "australia.txt").write_text(f"{CANBERRA}\n\n{SYDNEY}\n", encoding="utf-8")
    (docs / "more.jsonl").write_text(
        json.dumps({"id": "paris", "text": PARIS}) + "\n" + json.dumps({"id": "fox", "text": LONG}) + "\n",
        encoding="utf-8",
    )
    store = open_store(root / "store", model=minilm)
    summary = store.add([docs], workers=0)
    assert summary.failed == 0
    return root / "store"


def _app():
    from clipsearch.cli.qa import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps "ask" a named subcommand
    return app


def test_ask_cli_through_the_store(minilm_store, models):
    runner = CliRunner()
    result = runner.invoke(_app(), ["ask", QUESTION, "--store", str(minilm_store), "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert REQUIRED_KEYS <= out.keys()
    assert (out["answer"], out["kind"], out["passage"]) == (
        "Canberra is the capital city of Australia.",
        "sentence",
        CANBERRA,
    )
    assert out["passages"][0]["text"] == CANBERRA
    assert out["source"] == str(minilm_store.parent / "docs" / "australia.txt")
    assert (out["passages"][0]["start"], out["passages"][0]["end"]) == (0, len(CANBERRA))

    result = runner.invoke(
        _app(),
        [
            "ask",
            "Which airport do visitors use?",
            "--store",
            str(minilm_store),
            "-k",
            "4",
            "--json",
            "--reader",
            str(models["pointer"]),
            "--rerank",
            str(models["cross"]),
            "--max-length",
            "64",
            "--stride",
            "16",
        ],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["answer"], out["kind"]) == ("Canberra", "span")
    assert all("rerank_score" in p for p in out["passages"]) and len(out["passages"]) == 4

    result = runner.invoke(_app(), ["ask", QUESTION, "--store", str(minilm_store)])
    assert result.exit_code == 0, result.output
    assert "Sentence answer (no reader model" in result.stdout and "Canberra is the capital city" in result.stdout
    assert f"from {minilm_store.parent / 'docs' / 'australia.txt'} [chars 0-{len(CANBERRA)}]" in result.stdout


def test_ask_cli_errors_are_one_line(tmp_path, models):
    runner = CliRunner()
    result = runner.invoke(_app(), ["ask", QUESTION, "--store", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert (
        result.output.strip()
        == f"error: no store at {tmp_path / 'none'}; build one with: clipsearch index PATH --store {tmp_path / 'none'}"
    )


def test_evaluate_qa_cli(minilm_store, models, tmp_path):
    from clipsearch.cli.main import app

    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        "\n".join(
            json.dumps(x)
            for x in [
                {"question": QUESTION, "answers": ["Canberra"]},
                {"question": "When was the Eiffel Tower finished?", "answers": ["1889"], "context_id": "paris"},
                {"question": "Which animal jumps over the dog?", "answers": ["fox"], "context_id": "fox"},
            ]
        )
    )
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", "qa", str(qa), "--store", str(minilm_store), "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["n"], out["k"], out["top1"], out["topk"], out["exact_match"]) == (3, 2, 1.0, 1.0, None)
    result = runner.invoke(
        app, ["evaluate", "qa", str(qa), "--store", str(minilm_store), "-k", "1", "--reader", str(models["pointer"])]
    )
    assert result.exit_code == 0, result.output
    assert "retrieval top-1 accuracy: 1.000" in result.stdout
    # the pointer model always answers "Canberra": right for the first question only
    assert "exact match: 0.333   F1: 0.333   over 3 questions" in result.stdout


def test_store_retriever_with_tiny_dpr_and_reembedding(tmp_path, models, minilm_store):
    from clipsearch.collection import open_store

    dpr = load_dpr(str(models["dpr"]))
    document = f"{SYDNEY}\n\n{PARIS}\n\n{LONG}\n"
    (tmp_path / "doc.txt").write_text(document, encoding="utf-8")
    store = open_store(tmp_path / "store", model=dpr)
    store.add([tmp_path / "doc.txt"], workers=0)
    assert store.model_name == str(models["dpr"])  # the store records which encoder embedded it
    # indexing split LONG (> 510 DPR tokens) into overlapping sentence windows
    assert store.count("text") > 3
    retriever = StoreRetriever(store, dpr)
    k = store.count("text")
    result = ask(QUESTION, retriever, k=k, reader=load_reader(str(models["pointer"])), max_length=64, stride=16)
    hit = result.passage
    assert (result.answer.text, hit.source) == ("Canberra", str(tmp_path / "doc.txt"))
    assert document[hit.start : hit.end] == hit.text
    assert document[hit.start + result.answer.start : hit.start + result.answer.end] == "Canberra"

    # another retriever than the store's model: the store's passages are re-embedded in memory
    seen = []
    other = open_retriever(minilm_store, dpr, on_reembed=lambda n, name: seen.append((n, name)))
    assert isinstance(other, MemoryRetriever) and seen == [(4, str(models["dpr"]))]  # 2 paragraphs + 2 records
    assert len(other.retrieve(QUESTION, 10)) == 4
    with pytest.raises(StoreError, match=re.escape("there are no text passages to search")):
        ask(QUESTION, MemoryRetriever(dpr, []), k=3)
