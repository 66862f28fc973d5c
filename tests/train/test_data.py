"""Training examples: assistant-only labels, multi-turn, packing isolation, windows."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmops.models.loading import load_tokenizer
from lmops.train.data import IGNORE, Example, collate, encode_chat, pack
from tests.train.tiny import make_model, make_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return load_tokenizer(make_tokenizer(tmp_path_factory.mktemp("tok")))


def decode_labelled(tok, ex: Example) -> str:  # type: ignore[no-untyped-def]
    return tok.decode([t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE])


def test_prompt_tokens_carry_no_loss(tok) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "system", "content": "You add numbers."},
        {"role": "user", "content": "12+34="},
        {"role": "assistant", "content": "46"},
    ]
    ex, truncated = encode_chat(tok, messages, 512)
    assert not truncated
    assert decode_labelled(tok, ex) == "46<|im_end|>"
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert all(label == IGNORE for label in ex.labels[:n_prompt])
    # the answer and its end marker are learned; the newline after the marker is formatting
    assert ex.labels[n_prompt:-1] == ex.input_ids[n_prompt:-1] and ex.labels[-1] == IGNORE


def test_multi_turn_trains_every_assistant_turn(tok) -> None:  # type: ignore[no-untyped-def]
    messages = [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！"},
        {"role": "user", "content": "1+1="},
        {"role": "assistant", "content": "2"},
    ]
    ex, _ = encode_chat(tok, messages, 512)
    assert decode_labelled(tok, ex) == "你好！<|im_end|>2<|im_end|>"


def test_packing_restarts_positions_and_blocks_cross_attention(tok, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModelForCausalLM

    a = Example([5, 6, 7, 8], [5, 6, 7, 8])
    b = Example([9, 10, 11], [IGNORE, 10, 11])
    rows = pack([a, b, a], max_len=8)
    assert [len(r[0]) for r in rows] == [7, 4]
    _ids, labels, pos = rows[0]
    assert pos == [0, 1, 2, 3, 0, 1, 2]
    assert labels[0] == IGNORE and labels[4] == IGNORE  # no loss across a boundary
    model = AutoModelForCausalLM.from_pretrained(
        str(make_model(tmp_path / "m", Path(tok.name_or_path)))
    )
    model.eval()
    batch = collate(rows[:1], pad_id=0, packed=True)
    with torch.no_grad():
        packed = model(
            input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False
        ).logits[0]
        alone_b = model(input_ids=torch.tensor([b.input_ids])).logits[0]
        alone_a = model(input_ids=torch.tensor([a.input_ids])).logits[0]
    # the second example sees exactly what it would see alone: no attention into the first
    assert torch.allclose(packed[4:7], alone_b, atol=1e-5)
    assert torch.allclose(packed[:4], alone_a, atol=1e-5)


def test_truncation_is_reported(tok) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "ok"}]
    ex, truncated = encode_chat(tok, messages, 32)
    assert truncated and len(ex) == 32


def test_sft_trains_mixed_in_text_rows_on_every_token(tok, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    from lmops.core.errors import UserError
    from lmops.train.data import build_sft_examples, load_training_rows

    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    rows = [chat, {"text": "The quick brown fox."}, {"text": ""}]
    path = tmp_path / "mix.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # the empty text is a bad row like any other: named, or skipped and counted
    with pytest.raises(UserError, match=r"mix.jsonl:3: field 'text'.*\(expected pretrain rows\)"):
        load_training_rows([path], "sft")
    loaded = load_training_rows([path], "sft", on_error="skip")
    assert [r for _w, _n, r in loaded.rows] == rows[:2]
    examples, stats = build_sft_examples(loaded.rows, tok, 64)
    assert stats["text_rows"] == 1
    text = examples[1]
    ids = tok("The quick brown fox.", add_special_tokens=False)["input_ids"]
    assert text.input_ids == text.labels == [*ids, tok.eos_token_id]  # every token, then EOS
    assert IGNORE in examples[0].labels  # the chat row still learns its answer only
    # text alone is pretraining, not SFT
    only = tmp_path / "text.jsonl"
    only.write_text(json.dumps({"text": "just text"}) + "\n")
    with pytest.raises(UserError, match="text rows may be mixed in, not trained alone"):
        load_training_rows([only], "sft")


def test_continued_pretraining_reads_plain_text_files(tok, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A .txt corpus (tinyshakespeare's input.txt) was refused as an unknown file type; each
    text file is now one document, cut into the windows its {"text"} row would give."""
    import json

    from lmops.core.errors import UserError
    from lmops.train.data import build_pretrain_examples

    docs = [
        "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
    ]
    docs.append("# Notes\n\nThe quick brown fox jumps over the lazy dog. " * 3)
    corpus = tmp_path / "corpus"
    (corpus / "more").mkdir(parents=True)
    (corpus / "a.txt").write_text(docs[0], encoding="utf-8")
    (corpus / "more" / "b.md").write_text(docs[1], encoding="utf-8")
    (corpus / ".hidden.txt").write_text("never read", encoding="utf-8")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")

    want, _ = build_pretrain_examples([rows], tok, 16, "text")
    for paths in ([corpus], [corpus / "a.txt", corpus / "more" / "b.md"]):
        got, stats = build_pretrain_examples(paths, tok, 16, "text")
        assert got == want
        assert stats["docs"] == 2 and stats["rows_read"] == 2
    # a text file mixed with row files
    mixed, stats = build_pretrain_examples([corpus / "a.txt", rows], tok, 16, "text")
    assert stats["docs"] == 3 and len(mixed) > len(want)

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(UserError) as err:
        build_pretrain_examples([latin1, rows], tok, 16, "text")
    assert str(err.value).startswith(f"{latin1}: not valid UTF-8 (byte 3)")
    _, stats = build_pretrain_examples([latin1, rows], tok, 16, "text", on_error="skip")
    assert stats["skipped_by_reason"] == {"encoding": 1} and stats["rows_used"] == 2
