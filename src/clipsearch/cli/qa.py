"""``clipsearch ask`` and ``clipsearch evaluate qa``: question answering over a text store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from clipsearch.cli.common import JsonOption, StoreOption, console, err_console, handle_errors

RetrieverOption = Annotated[
    str | None,
    typer.Option(
        "--retriever",
        help="Model that embeds the question (default: the store's model). Another model re-embeds "
        "the store's passages in memory, e.g. 'dpr:QUESTION_FOLDER,CTX_FOLDER' on a 'minilm' store.",
        show_default=False,
    ),
]
ReaderOption = Annotated[
    str | None,
    typer.Option(
        "--reader",
        help="Extractive QA model (a Hugging Face id, downloaded on first use, or a folder), e.g. "
        "'deepset/roberta-base-squad2'. Without it the answer is the best-matching sentence.",
        show_default=False,
    ),
]
RerankOption = Annotated[
    str | None,
    typer.Option(
        "--rerank",
        help="Cross-encoder (a Hugging Face id, downloaded on first use, or a folder) that reorders 3k retrieved candidates; keeps the best k.",
        show_default=False,
    ),
]
TopKOption = Annotated[int, typer.Option("-k", "--top-k", min=1, max=1000, help="Passages to retrieve and read.")]


def _load(store: str | None, retriever: str | None, reader: str | None, rerank: str | None) -> tuple[Any, Any, Any]:
    from clipsearch.models.cross_encoder import load_reranker
    from clipsearch.models.reader import load_reader
    from clipsearch.tasks.qa import open_retriever

    def note(n: int, name: str) -> None:
        err_console.print(f"re-embedding {n} passages with {name} (the store was built with another model)")

    with err_console.status("loading models ...", spinner="dots"):
        found = open_retriever(store, retriever, on_reembed=note)
        read_model = load_reader(reader) if reader else None
        rerank_model = load_reranker(rerank) if rerank else None
    return found, read_model, rerank_model


@handle_errors
def ask_cmd(
    question: Annotated[str, typer.Argument(help="The question, in quotes.")],
    store: StoreOption = None,
    retriever: RetrieverOption = None,
    reader: ReaderOption = None,
    rerank: RerankOption = None,
    k: TopKOption = 5,
    stride: Annotated[
        int, typer.Option("--stride", min=0, help="Reader: tokens shared by neighbouring windows of a long passage.")
    ] = 128,
    max_length: Annotated[int, typer.Option("--max-length", min=16, help="Reader: tokens per window.")] = 384,
    min_confidence: Annotated[
        float | None,
        typer.Option(
            "--min-confidence", min=0.0, max=1.0, show_default=False,
            help="Decline when the best passage's calibrated confidence is below this. Default: the store's own line.",
        ),
    ] = None,  # fmt: skip
    as_json: JsonOption = False,
) -> None:
    """Answer a question from the passages of a text store.

    Retrieves the top-k passages, optionally reranks them, then reads the answer span with --reader, or (offline, no reader) returns the best-matching sentence, labelled as such.

    --json: {"question", "answer", "kind": "span"|"sentence", "score", "passage", "source", "passages",
    "declined", "declined_because", "confidence"}. When no passage matches the question well (the
    store's calibrated confidence), or the reader finds no answer, it says "No good answer" and
    gives its best guess only as that.

    Example:

        clipsearch ask "What is the capital city of Australia?" --store texts --json
    """
    from clipsearch.tasks.qa import ask

    found, read_model, rerank_model = _load(store, retriever, reader, rerank)
    result = ask(
        question, found, k=k, reader=read_model, reranker=rerank_model, stride=stride, max_length=max_length,
        min_confidence=min_confidence,
    )  # fmt: skip
    if as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return
    _print_result(result)


def _print_result(result: Any) -> None:
    from rich.markup import escape

    a, p = result.answer, result.passage
    if result.declined:
        console.print(f"[bold]No good answer[/]: {escape(result.declined_because or '')}.", soft_wrap=True)
        console.print("[dim]the nearest, for what it is worth:[/]")
    if a.kind == "span":
        console.print(
            f"[bold]Answer[/] (span read by {escape(result.reader or '')}, score {a.score:.3f}): [bold green]{escape(a.text)}[/]"
        )
    else:
        console.print(
            f"[bold]Sentence answer[/] (no reader model: the sentence closest to the question, not an extracted span; "
            f"cosine {a.score:.3f}):"
        )
        console.print(f"  [green]{escape(a.text)}[/]")
    where = escape(f" [chars {p.start}-{p.end}]") if p.start is not None else ""
    console.print(f"from {escape(p.source or p.id)}{where}", soft_wrap=True)
    highlighted = (
        escape(p.text[: a.start]) + "[bold green]" + escape(p.text[a.start : a.end]) + "[/]" + escape(p.text[a.end :])
    )
    console.print(f"  {highlighted}", soft_wrap=True)
    console.print("\n[dim]passages:[/]")
    for i, h in enumerate(result.passages, 1):
        rr = f" rerank {h.rerank_score:.3f}" if h.rerank_score is not None else ""
        snippet = " ".join(h.text.split())
        snippet = snippet if len(snippet) <= 100 else snippet[:97] + "..."
        console.print(
            f"  {i}. {h.score:.3f}{rr}  {escape(h.source or h.id)}  [dim]{escape(snippet)}[/]", soft_wrap=True
        )


@handle_errors
def evaluate_qa_cmd(
    file: Annotated[Path, typer.Argument(help='JSONL lines: {"question", "answers": [...], "context_id"?}.')],
    store: StoreOption = None,
    retriever: RetrieverOption = None,
    reader: ReaderOption = None,
    rerank: RerankOption = None,
    k: TopKOption = 5,
    as_json: JsonOption = False,
) -> None:
    """Measure retrieval top-1/top-k accuracy and, with --reader, exact match and F1.

    A retrieved passage is right when its record id equals "context_id" (when given), else when it contains one of the answers (SQuAD normalisation: case, punctuation and articles ignored).
    """
    from clipsearch.cli.progress import progress_bar
    from clipsearch.tasks.qa import evaluate_qa, load_qa_examples

    if not file.is_file():
        raise FileNotFoundError(2, "no such file", str(file))
    examples = load_qa_examples(file)
    found, read_model, rerank_model = _load(store, retriever, reader, rerank)
    with progress_bar(len(examples), "questions") as bar:
        task = bar.add_task("questions", total=len(examples))
        metrics = evaluate_qa(
            examples, found, k=k, reader=read_model, reranker=rerank_model, on_progress=lambda n: bar.advance(task, n)
        )
    if as_json:
        print(json.dumps(metrics.to_dict(), ensure_ascii=False))
        return
    lines = [f"questions: {metrics.n}   retriever: {found.encoder.name}" + (f"   rerank: {rerank}" if rerank else "")]
    lines.append(f"retrieval top-1 accuracy: {metrics.top1:.3f}")
    if metrics.k > 1:
        lines.append(f"retrieval top-{metrics.k} accuracy: {metrics.topk:.3f}")
    if read_model is not None:
        lines.append(f"reader: {reader}")
        if metrics.n_read:
            lines.append(
                f"exact match: {metrics.exact_match:.3f}   F1: {metrics.f1:.3f}   over {metrics.n_read} questions with answers"
            )
        else:
            lines.append("no question has answers to compare the reader's with")
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.command("ask")(ask_cmd)
