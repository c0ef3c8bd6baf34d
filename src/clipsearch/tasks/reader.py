"""Read an answer out of retrieved passages.

:func:`read` runs an extractive question-answering model (``AutoModelForQuestionAnswering``,
e.g. ``deepset/roberta-base-squad2`` or ``distilbert-base-cased-distilled-squad``, loaded by
:func:`clipsearch.models.reader.load_reader`) over every passage. Passages longer than the model's window are cut into overlapping windows
(``stride`` tokens shared between neighbours), and the best span over all windows of all
passages wins.

Spans are compared across windows by their raw logit sum ``start_logit + end_logit``, as in
BERT's and DPR's multi-passage readers: a per-window softmax would make every window's best
span look confident. The reported ``score`` is that span's probability within its own window,
``p_start * p_end`` (0-1, what the transformers QA pipeline reports).

:func:`sentence_answer` is the offline fallback when no reader model is available: the sentence
of the top passages closest to the question in the retriever's embedding space. It is labelled
``kind="sentence"``; it is a pointer to where the answer likely is, not an extracted span.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from clipsearch.errors import EmptyText
from clipsearch.models.base import Encoder
from clipsearch.models.reader import Reader, load_reader


@dataclass
class Answer:
    """An answer found in ``passages[passage_index]`` at characters ``start:end``."""

    text: str
    score: float  # span: probability within its window; sentence: cosine to the question
    passage_index: int
    start: int  # character offsets into that passage's text
    end: int
    kind: str = "span"  # "span" (read by a QA model) or "sentence" (offline fallback)
    logit: float | None = None  # span: start_logit + end_logit, the cross-window ranking key
    windows: int = 0  # span: how many windows the reader ran over all passages
    no_answer_logit: float | None = None  # span: the lowest "no answer" logit of any window (SQuAD 2.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read(
    question: str,
    passages: Sequence[Any],
    reader_model: Reader | str,
    *,
    max_answer_len: int = 30,
    stride: int = 128,
    max_length: int = 384,
    batch_size: int = 16,
) -> Answer:
    """The best answer span for ``question`` over all ``passages``.

    Args:
        question: the question.
        passages: strings, or objects with a ``.text`` (passages, retrieved hits).
        reader_model: a :class:`Reader` or a name for :func:`load_reader`.
        max_answer_len: the longest answer, in tokens.
        stride: tokens that neighbouring windows of one long passage share.
        max_length: tokens per window (question + passage + special tokens); capped at the
            model's own limit.
        batch_size: windows per forward pass.

    Returns:
        The best :class:`Answer` (``kind="span"``); its offsets index ``passages[passage_index]``.
    """
    import torch

    reader = reader_model if isinstance(reader_model, Reader) else load_reader(reader_model)
    texts = _texts(question, passages)
    if max_answer_len < 1:
        raise ValueError(f"max_answer_len must be at least 1, not {max_answer_len}")
    if stride < 0:
        raise ValueError(f"stride must be >= 0, not {stride}")
    tok = reader.tokenizer
    max_length = min(max_length, reader.max_length)
    q_len = len(tok(question, add_special_tokens=False)["input_ids"])
    room = max_length - q_len - tok.num_special_tokens_to_add(pair=True)
    if room <= stride:
        raise ValueError(
            f"a {max_length}-token window holds the {q_len}-token question and {room} passage tokens, "
            f"which must exceed the stride ({stride}): shorten the question, lower the stride, or raise max_length"
        )
    enc = tok(
        [question] * len(texts),
        texts,
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    sample_of = enc["overflow_to_sample_mapping"]
    offsets = enc["offset_mapping"]
    n_windows = len(enc["input_ids"])
    names = [k for k in tok.model_input_names if k in enc]
    # Batch windows of similar length and pad each batch to its longest: a long passage's full
    # windows then never pad the short passages' windows.
    order = sorted(range(n_windows), key=lambda w: len(enc["input_ids"][w]))

    best: tuple[float, float, int, int, int] | None = None  # logit, score, window, i, j
    # SQuAD 2.0: a window's "no answer" score is the logit sum at its first token ([CLS]); the
    # question is answerable when some window's best span beats the lowest of these
    null = np.inf
    for lo in range(0, n_windows, batch_size):
        ws = order[lo : lo + batch_size]
        batch = tok.pad({k: [enc[k][w] for w in ws] for k in names}, padding_side="right", return_tensors="pt")
        with torch.inference_mode():
            out = reader.model(**{k: v.to(reader.device) for k, v in batch.items()})
        starts = out.start_logits.float().cpu().numpy()
        ends = out.end_logits.float().cpu().numpy()
        length = starts.shape[1]
        band = np.triu(np.ones((length, length), dtype=bool)) & ~np.triu(
            np.ones((length, length), dtype=bool), max_answer_len
        )
        for b, w in enumerate(ws):
            null = min(null, float(starts[b][0] + ends[b][0]))
            seq_ids = enc.sequence_ids(w)  # right padding: token t of the window sits at position t
            in_passage = np.zeros(length, dtype=bool)
            in_passage[: len(seq_ids)] = [sid == 1 for sid in seq_ids]
            if not in_passage.any():
                continue
            s = np.where(in_passage, starts[b], -np.inf)
            e = np.where(in_passage, ends[b], -np.inf)
            pair = np.where(band, s[:, None] + e[None, :], -np.inf)
            i, j = np.unravel_index(int(np.argmax(pair)), pair.shape)
            logit = float(pair[i, j])
            if best is None or logit > best[0] or (logit == best[0] and w < best[2]):
                score = float(_softmax(s)[i] * _softmax(e)[j])
                best = (logit, score, w, int(i), int(j))
    if best is None:  # every passage tokenised to nothing (cannot happen for non-empty text)
        raise ValueError("no passage text reached the reader")
    logit, score, w, i, j = best
    p = int(sample_of[w])
    start, end = int(offsets[w][i][0]), int(offsets[w][j][1])
    return Answer(texts[p][start:end], score, p, start, end, "span", logit, int(n_windows), null)


def sentence_answer(
    question: str,
    passages: Sequence[Any],
    encoder: Encoder,
    *,
    top_passages: int = 3,
) -> Answer:
    """The sentence of the first ``top_passages`` passages closest to ``question`` (cosine).

    The question is embedded with ``role="query"`` and the sentences with ``role="passage"``, so
    asymmetric retrievers (DPR) use the right encoder for each. Returns an :class:`Answer` with
    ``kind="sentence"`` whose score is the cosine.
    """
    from clipsearch.text.passages import sentence_spans

    texts = _texts(question, passages)[: max(1, top_passages)]
    where = [(p, a, b) for p, text in enumerate(texts) for a, b in sentence_spans(text)]
    sentences = [texts[p][a:b] for p, a, b in where]
    q = encoder.encode_texts([question], role="query")
    s = encoder.encode_texts(sentences, role="passage")
    cos = (s @ q[0]).astype(np.float32)
    best = int(np.argmax(cos))
    p, a, b = where[best]
    return Answer(sentences[best], float(cos[best]), p, a, b, "sentence")


def _texts(question: str, passages: Sequence[Any]) -> list[str]:
    if not isinstance(question, str) or not question.strip():
        raise EmptyText("the question is empty; ask something")
    texts = [p if isinstance(p, str) else getattr(p, "text", None) for p in passages]
    if not texts:
        raise ValueError("no passages to read: retrieve at least one")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(
                f"passage #{i} has no text ({type(passages[i]).__name__}); give strings or objects with .text"
            )
    return texts


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - np.max(x))
    return z / z.sum()
