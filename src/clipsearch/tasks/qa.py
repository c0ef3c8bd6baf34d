"""Open-domain question answering: retrieve -> (rerank) -> read, and its evaluation.

1. A dense retriever embeds the question (``role="query"``) and finds the top-k passages by
   cosine: a store searched with the model that embedded it (:class:`StoreRetriever`), or
   passages held in memory (:class:`MemoryRetriever`).
2. Optionally a cross-encoder rescores the retrieved candidates (:mod:`clipsearch.tasks.rerank`).
3. A reader extracts the best answer span (:func:`clipsearch.tasks.reader.read`); without one,
   the best-matching sentence of the top passages is returned, labelled ``kind="sentence"``.

:func:`evaluate_qa` measures retrieval top-1/top-k accuracy and, with a reader, SQuAD exact
match and F1 on a jsonl file of ``{"question", "answers": [...], "context_id"?}`` lines.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from clipsearch.errors import EmptyText, StoreError
from clipsearch.models.base import Encoder
from clipsearch.tasks.reader import Answer, Reader, read, sentence_answer
from clipsearch.tasks.rerank import Reranker, rerank

SENTENCE_PASSAGES = 3  # passages searched for a sentence answer when there is no reader
RERANK_CANDIDATES = 3  # with --rerank, retrieve this many times k candidates, keep the best k


@dataclass
class Retrieved:
    """One retrieved passage: its text, where it came from, and its scores."""

    id: str
    text: str
    score: float  # cosine between the question and the passage
    source: str | None = None  # the document, e.g. ``docs.jsonl#c1``
    start: int | None = None  # character offsets of the passage in its document
    end: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    rerank_score: float | None = None  # the cross-encoder's score, when reranked
    confidence: float | None = None  # the store's calibrated confidence (clipsearch.calibration)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.rerank_score is None:
            del out["rerank_score"]
        return out


class Retriever(Protocol):
    """Anything that returns the top-k passages for a question."""

    encoder: Encoder

    def retrieve(self, question: str, k: int) -> list[Retrieved]: ...


class MemoryRetriever:
    """Exact cosine search over passages embedded once and held in memory.

    Args:
        encoder: embeds passages with ``role="passage"`` and questions with ``role="query"``.
        passages: strings, or objects with ``.text`` (and optionally ``.id``, ``.source``,
            ``.start``, ``.end``, ``.metadata``), such as :class:`clipsearch.text.Passage`.
        ids: one id per passage; default: the passage's ``.id``, else its position as a string.
    """

    def __init__(self, encoder: Encoder, passages: Sequence[Any], *, ids: Sequence[str] | None = None):
        if ids is not None and len(ids) != len(passages):
            raise ValueError(f"got {len(ids)} ids for {len(passages)} passages; give one id per passage")
        self.encoder = encoder
        self.items = [_as_retrieved(p, None if ids is None else ids[i], i) for i, p in enumerate(passages)]
        texts = [r.text for r in self.items]
        self.vectors = encoder.encode_texts(texts, role="passage") if texts else np.zeros((0, encoder.dim), np.float32)

    def retrieve(self, question: str, k: int) -> list[Retrieved]:
        """The ``k`` passages with the highest cosine to ``question``, best first (ties: input order)."""
        _check_question(question)
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        if not self.items:
            return []
        q = self.encoder.encode_texts([question], role="query")[0]
        scores = self.vectors @ q
        order = np.argsort(-scores, kind="stable")[:k]
        return [_with(self.items[i], score=float(scores[i])) for i in order]


class StoreRetriever:
    """Searches the text items of a clipsearch store with the model that embedded them."""

    def __init__(self, store: Any, encoder: Encoder | None = None):
        self.store = store
        self.encoder = encoder if encoder is not None else getattr(store, "encoder", None)
        self.min_confidence: float | None = None  # the store's line, as the last search judged by

    def retrieve(self, question: str, k: int) -> list[Retrieved]:
        _check_question(question)
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        hits = self.store.search(question, k=k, modality="text")
        self.min_confidence = getattr(hits, "min_confidence", None)
        return [store_hit(h) for h in hits]


MAX_REEMBED = 20_000
"""Most store passages :func:`open_retriever` re-embeds in memory for a ``retriever`` other than
the store's model (about a minute for MiniLM on two CPU cores); beyond it, index a new store."""


def open_retriever(
    store: str | Path | None = None,
    retriever: str | Encoder | None = None,
    *,
    on_reembed: Callable[[int, str], None] | None = None,
) -> Retriever:
    """A retriever over a store's text passages.

    Args:
        store: the store folder (None: the default store); it must exist.
        retriever: a model name or encoder; None or the store's own model searches the store's
            vectors. Any other model re-embeds the store's passages in memory (at most
            :data:`MAX_REEMBED`), which lets you compare retrievers on one store.
        on_reembed: called with ``(number of passages, model name)`` before re-embedding.

    Raises:
        StoreError: no store, or too many passages to re-embed.
    """
    from clipsearch.collection import open_store
    from clipsearch.store import same_model

    opened = open_store(store, create=False)
    name = retriever if isinstance(retriever, str) or retriever is None else retriever.name
    if name is None or same_model(name, opened.model_name):
        encoder = retriever if isinstance(retriever, Encoder) else opened.encoder
        return StoreRetriever(opened, encoder)
    n = opened.count("text")
    if n > MAX_REEMBED:
        raise StoreError(
            f"store {opened.root} holds {n} text passages embedded with {opened.model_name!r}; re-embedding them "
            f"with {name!r} in memory is limited to {MAX_REEMBED}: index them into a new store with that model"
        )
    if isinstance(retriever, Encoder):
        encoder = retriever
    else:
        from clipsearch.models.registry import load_model

        encoder = load_model(name)
    if on_reembed:
        on_reembed(n, encoder.name)
    columns = ["id", "text", "source", "path", "record", "char_start", "char_end", "extra", "caption", "label"]
    rows = opened.to_arrow(columns, where="modality = 'text'").to_pylist()
    return MemoryRetriever(encoder, [store_hit(r) for r in rows])


def store_hit(hit: Any) -> Retrieved:
    """A store search result (an object or a dict with the items-table columns) as :class:`Retrieved`."""

    def get(name: str, default: Any = None) -> Any:
        if isinstance(hit, dict):
            return hit.get(name, default)
        return getattr(hit, name, default)

    extra = get("extra") or {}
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except ValueError:
            extra = {"extra": extra}
    metadata = dict(extra) if isinstance(extra, dict) else {}
    for key in ("record", "path", "caption", "label"):
        if get(key) not in (None, ""):
            metadata[key] = get(key)
    source = get("source") or get("path")
    record = get("record")
    if source and record and not str(source).endswith(str(record)):
        source = f"{source}{record}"
    start = get("char_start", get("start"))
    end = get("char_end", get("end"))
    confidence = get("confidence")
    return Retrieved(
        id=str(get("id")),
        text=str(get("text") or ""),
        score=float(get("score", 0.0) or 0.0),
        source=source,
        start=None if start is None else int(start),
        end=None if end is None else int(end),
        metadata=metadata,
        confidence=None if confidence is None else float(confidence),
    )


# -- ask -------------------------------------------------------------------------------------


@dataclass
class QAResult:
    """The answer to one question with the passages it was read from."""

    question: str
    answer: Answer
    passages: list[Retrieved]  # after reranking, best first
    retriever: str  # model names, for the record
    reader: str | None = None
    reranker: str | None = None
    declined: bool = False  # no good answer: see :func:`ask`
    declined_because: str | None = None  # why, in words
    confidence: float | None = None  # the best passage's calibrated retrieval confidence

    @property
    def passage(self) -> Retrieved:
        return self.passages[self.answer.passage_index]

    def to_dict(self) -> dict[str, Any]:
        """``{"question", "answer", "kind", "score", "passage", "source", "passages", ...}``."""
        return {
            "question": self.question,
            "answer": self.answer.text,
            "kind": self.answer.kind,
            "score": self.answer.score,
            "passage": self.passage.text,
            "source": self.passage.source,
            "passage_id": self.passage.id,
            "answer_start": self.answer.start,  # character offsets in "passage"
            "answer_end": self.answer.end,
            "passages": [p.to_dict() for p in self.passages],
            "models": {"retriever": self.retriever, "reader": self.reader, "reranker": self.reranker},
            "declined": self.declined,
            "declined_because": self.declined_because,
            "confidence": self.confidence,
            "no_answer_logit": self.answer.no_answer_logit,
        }


def retrieve(
    question: str,
    retriever: Retriever,
    *,
    k: int = 5,
    reranker: Reranker | None = None,
    candidates: int | None = None,
) -> list[Retrieved]:
    """The top ``k`` passages; with ``reranker``, the best ``k`` of ``candidates`` retrieved ones
    (default ``3 * k``) as the cross-encoder orders them."""
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    if reranker is None:
        return retriever.retrieve(question, k)
    hits = retriever.retrieve(question, max(k, candidates or RERANK_CANDIDATES * k))
    return [_with(hits[i], rerank_score=score) for i, score in rerank(question, hits, reranker)[:k]]


def ask(
    question: str,
    retriever: Retriever,
    *,
    k: int = 5,
    reader: Reader | None = None,
    reranker: Reranker | None = None,
    candidates: int | None = None,
    max_answer_len: int = 30,
    stride: int = 128,
    max_length: int = 384,
    min_confidence: float | None = None,
    decline: bool = True,
) -> QAResult:
    """Answer ``question`` from the passages ``retriever`` finds, or decline.

    The answer is declined (``declined=True``, the best guess still given) when the best
    retrieved passage's calibrated confidence is below ``min_confidence`` (default: the store's
    own line, :mod:`clipsearch.calibration`; only retrievers over a store have one), or, with a
    reader, when the reader's "no answer" logit beats its best span's (SQuAD 2.0 style: the
    lowest ``[CLS]`` start + end logit of any window against the best span's start + end).

    Args:
        question: the question.
        retriever: a :class:`StoreRetriever`, :class:`MemoryRetriever` or anything with
            ``retrieve(question, k)`` and ``encoder``.
        k: passages to retrieve (and read).
        reader: extractive QA model; None gives a sentence answer from the top passages.
        reranker: cross-encoder that reorders the retrieved candidates.
        candidates: passages retrieved before reranking (default ``3 * k``).
        max_answer_len, stride, max_length: see :func:`clipsearch.tasks.reader.read`.
        min_confidence: the retrieval confidence (0-1) below which the answer is declined.
        decline: False always answers (as before calibration).

    Raises:
        StoreError: there are no text passages to search.
    """
    _check_question(question)
    hits = retrieve(question, retriever, k=k, reranker=reranker, candidates=candidates)
    if not hits:
        raise StoreError("there are no text passages to search: index .txt, .jsonl or .csv documents first")
    if reader is not None:
        answer = read(question, hits, reader, max_answer_len=max_answer_len, stride=stride, max_length=max_length)
    else:
        answer = sentence_answer(question, hits, retriever.encoder, top_passages=SENTENCE_PASSAGES)
    confidences = [h.confidence for h in hits if h.confidence is not None]
    confidence = max(confidences) if confidences else None
    line = min_confidence if min_confidence is not None else getattr(retriever, "min_confidence", None)
    because = None
    if decline and confidence is not None and line is not None and confidence < line:
        because = f"no passage matches the question well (confidence {confidence:.2f}, below {line:.2f})"
    elif decline and answer.no_answer_logit is not None and answer.logit is not None and answer.no_answer_logit > answer.logit:
        because = (
            f"the reader finds no answer in the passages (no-answer logit {answer.no_answer_logit:.2f} "
            f"above the best span's {answer.logit:.2f})"
        )
    return QAResult(
        question,
        answer,
        hits,
        retriever.encoder.name,
        reader.name if reader is not None else None,
        reranker.name if reranker is not None else None,
        declined=because is not None,
        declined_because=because,
        confidence=confidence,
    )


# -- evaluate --------------------------------------------------------------------------------


@dataclass
class QAExample:
    """One evaluation question with its accepted answers and, optionally, its passage's id."""

    question: str
    answers: list[str]
    context_id: str | None = None


def load_qa_examples(path: str | Path) -> list[QAExample]:
    """Read ``{"question", "answers": [...], "context_id"?}`` lines (blank lines skipped).

    Raises:
        ValueError: naming the file, line and what is wrong with it.
    """
    from clipsearch.text.passages import json_records

    path = Path(path)
    out = []
    for where, obj, reason in json_records(path):
        if obj is None:
            raise ValueError(f"{where}: {reason}")
        question, answers, context_id = obj.get("question"), obj.get("answers", []), obj.get("context_id")
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}: 'question' must be a non-empty string, not {question!r}")
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise ValueError(f"{where}: 'answers' must be a list of strings, not {answers!r}")
        if context_id is not None and not isinstance(context_id, (str, int)):
            raise ValueError(f"{where}: 'context_id' must be a string or integer, not {context_id!r}")
        if not answers and context_id is None:
            raise ValueError(f"{where}: give 'answers' or 'context_id', or both; this line has neither")
        out.append(QAExample(question, answers, None if context_id is None else str(context_id)))
    if not out:
        raise ValueError(f"{path} holds no questions")
    return out


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower-case, drop punctuation and the articles a/an/the, squeeze spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


_PUNCTUATION = frozenset(string.punctuation)


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def f1_score(prediction: str, answers: Sequence[str]) -> float:
    """SQuAD's token F1: the best over ``answers`` of the harmonic mean of token precision and recall."""
    return max((_f1(prediction, a) for a in answers), default=0.0)


def _f1(prediction: str, answer: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    if not pred or not gold:
        return float(pred == gold)
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def is_hit(passage: Retrieved, example: QAExample) -> bool:
    """Whether ``passage`` is right for ``example``.

    With a ``context_id``: the passage's id, its metadata ``id``, its record (``#ID``) or the end
    of its source (``...#ID``) equals it. Otherwise: the normalised passage contains a normalised
    answer as whole words (DPR's "has answer" test).
    """
    if example.context_id is not None:
        cid = example.context_id
        meta = passage.metadata or {}
        return (
            passage.id == cid
            or str(meta.get("id", "\0")) == cid
            or meta.get("record") == f"#{cid}"
            or bool(passage.source and passage.source.endswith(f"#{cid}"))
        )
    text = f" {normalize_answer(passage.text)} "
    return any(norm and f" {norm} " in text for norm in map(normalize_answer, example.answers))


@dataclass
class QAMetrics:
    """Retrieval accuracy over all questions; reader metrics over questions that have answers."""

    n: int  # questions
    k: int
    top1: float  # fraction whose first passage is right
    topk: float  # fraction with a right passage among the first k
    exact_match: float | None = None  # with a reader: mean EM over ``n_read`` questions
    f1: float | None = None
    n_read: int = 0
    per_question: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_qa(
    examples: Sequence[QAExample],
    retriever: Retriever,
    *,
    k: int = 5,
    reader: Reader | None = None,
    reranker: Reranker | None = None,
    on_progress: Callable[[int], None] | None = None,
    **read_options: Any,
) -> QAMetrics:
    """Retrieve (and rerank) for every example; with ``reader``, also read and score the answer.

    Returns:
        :class:`QAMetrics`; ``per_question`` holds ``{"question", "rank", "prediction", "em",
        "f1"}`` (``rank``: 1-based position of the first right passage, or None).
    """
    if not examples:
        raise ValueError("no examples to evaluate")
    rows, ems, f1s = [], [], []
    for ex in examples:
        hits = retrieve(ex.question, retriever, k=k, reranker=reranker)
        rank = next((i + 1 for i, h in enumerate(hits) if is_hit(h, ex)), None)
        row: dict[str, Any] = {"question": ex.question, "rank": rank}
        if reader is not None and ex.answers and hits:
            pred = read(ex.question, hits, reader, **read_options).text
            row.update(prediction=pred, em=exact_match(pred, ex.answers), f1=f1_score(pred, ex.answers))
            ems.append(row["em"])
            f1s.append(row["f1"])
        rows.append(row)
        if on_progress:
            on_progress(1)
    n = len(rows)
    return QAMetrics(
        n=n,
        k=k,
        top1=sum(r["rank"] == 1 for r in rows) / n,
        topk=sum(r["rank"] is not None for r in rows) / n,
        exact_match=float(np.mean(ems)) if ems else None,
        f1=float(np.mean(f1s)) if f1s else None,
        n_read=len(ems),
        per_question=rows,
    )


# -- helpers ---------------------------------------------------------------------------------


def _check_question(question: str) -> None:
    if not isinstance(question, str) or not question.strip():
        raise EmptyText("the question is empty; ask something")


def _as_retrieved(p: Any, given_id: str | None, index: int) -> Retrieved:
    if isinstance(p, Retrieved):
        return p
    if isinstance(p, str):
        return Retrieved(given_id or str(index), p, 0.0)
    meta = dict(getattr(p, "metadata", None) or {})
    pid = given_id or getattr(p, "id", None) or str(index)
    return Retrieved(
        str(pid), p.text, 0.0, getattr(p, "source", None), getattr(p, "start", None), getattr(p, "end", None), meta
    )


def _with(item: Retrieved, **changes: Any) -> Retrieved:
    from dataclasses import replace

    return replace(item, metadata=dict(item.metadata), **changes)
