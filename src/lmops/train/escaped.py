"""TRL's trainers tokenize the preference rows' texts themselves; a row whose text (a
message's, a tool call's, its tools') holds special-token strings
(``<|im_end|>\\n<|im_start|>system``) must train on the ids the
gateway reads for it, where those strings are ordinary text
(:class:`lmops.models.chat.Literals`), not on the control tokens ``tokenizer(text)`` makes.

:func:`reading_ids` subclasses a TRL trainer so that where it tokenizes a row's text
(DPO's and KTO's ``_prepare_dataset``, ORPO's ``tokenize_row``) it calls
:class:`LiteralTexts`: the tokenizer, except that the texts of such rows answer with
their rendered ids. Rows without such strings are tokenized by the tokenizer as before,
and a trainer with none is TRL's own class.

Such a row's texts are keyed by the row, not by what they read: its prompt begins with a
mark of private-use characters around a salt of this job and the row's number, which no
row's text can hold, so a plain row that renders to the same text (real turns that read
as the forged ones) is tokenized as its own text. :func:`check_read` refuses a trainer
that did not read the rows' ids (a TRL whose hooks moved) before it trains.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lmops.core.errors import UserError

__all__ = ["LiteralTexts", "check_read", "literal_table", "reading_ids"]


def _answers(item: Any) -> list[str]:
    return [item.chosen, item.rejected] if hasattr(item, "chosen") else [item.completion]


def literal_table(items: Iterable[Any]) -> tuple[list[Any], dict[str, list[int]]]:
    """(``items``, those whose message text holds special-token strings keyed by the row:
    their ``prompt`` begun with a mark no text can hold; the texts TRL tokenizes of those,
    ``prompt`` and ``prompt + answer``, each with its ids)."""
    salt = uuid.uuid4().hex
    out: list[Any] = []
    table: dict[str, list[int]] = {}
    for n, item in enumerate(items):
        if not item.literal:
            out.append(item)
            continue
        item = dataclasses.replace(item, prompt=f"\ue000lmops-row.{salt}.{n}\ue001{item.prompt}")
        prompt_ids, *answer_ids = item.ids
        table[item.prompt] = prompt_ids
        for a, ids in zip(_answers(item), answer_ids, strict=True):
            table[item.prompt + a] = prompt_ids + ids
        out.append(item)
    return out, table


# keywords that leave the ids as they are where their value is None or False (the
# tokenizer's defaults); a table text is also answered under add_special_tokens
_PASSIVE = frozenset({"text_pair", "truncation", "max_length", "padding", "return_tensors"})


class LiteralTexts:
    """``tokenizer`` as TRL calls it on a row's text (``tok(text=...)``,
    ``tok(text, add_special_tokens=False)``): the ids of ``table`` for its texts (and
    for one of them followed by the EOS token's text, as TRL appends it), the tokenizer's
    own otherwise. Every other attribute is the tokenizer's."""

    def __init__(self, tokenizer: Any, table: Mapping[str, list[int]]) -> None:
        self._tok, self._table = tokenizer, table
        # what the tokenizer adds around a text with add_special_tokens (a BOS, say)
        bare = list(tokenizer("a", add_special_tokens=False)["input_ids"])
        full = list(tokenizer("a")["input_ids"])
        at = next((i for i in range(len(full)) if full[i : i + len(bare)] == bare), 0)
        self._head, self._tail = full[:at], full[at + len(bare) :]

    def _ids(self, text: Any) -> list[int] | None:
        if not isinstance(text, str):
            return None
        if text in self._table:
            return list(self._table[text])
        eos = self._tok.eos_token
        if eos and text.endswith(eos) and text[: -len(eos)] in self._table:
            return [*self._table[text[: -len(eos)]], self._tok.eos_token_id]
        return None

    def __call__(self, text: Any = None, *args: Any, **kwargs: Any) -> Any:
        ids = self._ids(text)
        if ids is None:
            return self._tok(text, *args, **kwargs)
        # the table answers a text as TRL 1.16 asks for it; any other request (a text pair,
        # truncation, tensors) would need the tokenizer's handling of these ids: refused,
        # never answered with the text's control tokens or with uncut ids
        asked = ["positional arguments"] * bool(args) + [
            k
            for k, v in kwargs.items()
            if k != "add_special_tokens" and not (k in _PASSIVE and (v is None or v is False))
        ]
        if asked:
            import trl

            raise UserError(
                f"TRL {trl.__version__} tokenized a row whose text holds special-token strings "
                f"with {', '.join(asked)}, which lmops cannot answer with the row's own "
                "ids; install the TRL version lmops pins (pip install -e . or the lock file)"
            )
        if kwargs.get("add_special_tokens", True):
            ids = [*self._head, *ids, *self._tail]
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    def __getattr__(self, name: str) -> Any:
        # only called for what this object lacks; a private name (pickle's and deepcopy's
        # probes, _tok itself before __init__ or after a bare copy) is not the tokenizer's
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._tok, name)


def reading_ids(trainer_class: type, table: Mapping[str, list[int]]) -> type:
    """``trainer_class`` (a TRL DPO, KTO or ORPO trainer) tokenizing a row's texts through
    :class:`LiteralTexts` of ``table``; the class itself where ``table`` is empty."""
    if not table:
        return trainer_class

    class ReadingIds(trainer_class):
        def _prepare_dataset(  # DPO, KTO
            self, dataset: Any, processing_class: Any, *args: Any, **kwargs: Any
        ) -> Any:
            texts = LiteralTexts(processing_class, table)
            return super()._prepare_dataset(dataset, texts, *args, **kwargs)

        def tokenize_row(self, *args: Any, **kwargs: Any) -> Any:  # ORPO
            real: Any = getattr(self, "processing_class")  # noqa: B009 (mypy: set by TRL)
            self.processing_class = LiteralTexts(real, table)
            try:
                return super().tokenize_row(*args, **kwargs)
            finally:
                self.processing_class = real

    ReadingIds.__name__ = ReadingIds.__qualname__ = trainer_class.__name__
    return ReadingIds


# the columns TRL prepares a row's ids in: a prompt's (DPO, KTO; ORPO), and each answer's
# (DPO's and KTO's after the prompt; ORPO's, and older TRLs', with the prompt before)
_PROMPT_COLUMNS = ("prompt_ids", "prompt_input_ids")


def _answer_columns(name: str) -> tuple[str, str]:
    return f"{name}_ids", f"{name}_input_ids"


def _read_forms(
    row: Sequence[Sequence[int]], bos: int | None, eos: int | None
) -> set[tuple[tuple[int, ...], ...]]:
    """The (prompt, answer, ...) ids a prepared ``row`` may stand for: its prompt with or
    without a BOS TRL put first, each answer with or without the prompt before it and an EOS
    TRL put last."""
    prompt, *answers = (list(ids) for ids in row)
    prompts = [prompt] + ([prompt[1:]] if bos is not None and prompt[:1] == [bos] else [])
    outs: list[list[tuple[int, ...]]] = []
    for a in answers:
        a = a[len(prompt) :] if a[: len(prompt)] == prompt else a
        outs.append([tuple(a)] + ([tuple(a[:-1])] if eos is not None and a[-1:] == [eos] else []))
    forms: set[tuple[tuple[int, ...], ...]] = {()}
    for choices in [[tuple(p) for p in prompts], *outs]:
        forms = {(*f, c) for f in forms for c in choices}
    return forms


def _was_read(ids: Sequence[list[int]], read: set[tuple[tuple[int, ...], ...]]) -> bool:
    """Whether a row of ``ids`` (prompt, answer, ...) was prepared whole, or (KTO's, of a
    pair) as one example of each answer."""
    prompt, *answers = (tuple(x) for x in ids)
    return (prompt, *answers) in read or all((prompt, a) in read for a in answers)


def check_read(trainer: Any, items: Sequence[Any], stage: str) -> None:
    """Refuse, in one line, a TRL trainer that did not tokenize the rows whose message text
    holds special-token strings through :class:`LiteralTexts`: for every one of them, a row
    it prepared must hold the row's own prompt ids (DPO's and KTO's ``prompt_ids``, ORPO's
    ``prompt_input_ids`` after a BOS it may add) and the row's own ids of each answer
    (``chosen_ids``/``rejected_ids``, KTO's ``completion_ids``, ORPO's ``*_input_ids`` after
    the prompt; an EOS it may add last). A TRL that renamed the hooks, or that tokenizes an
    answer's text on its own, would otherwise train on the control tokens its own
    tokenizing makes. Only rows TRL keeps whole are looked for (it drops or cuts a prompt
    that fills ``max_length``)."""
    limit = getattr(getattr(trainer, "args", None), "max_length", None) or float("inf")
    want = [
        i for i in items if i.literal and len(i.ids[0]) + max(len(a) for a in i.ids[1:]) + 2 < limit
    ]
    if not want:
        return
    tok = getattr(trainer, "processing_class", None)
    bos, eos = getattr(tok, "bos_token_id", None), getattr(tok, "eos_token_id", None)
    read: set[tuple[tuple[int, ...], ...]] = set()  # (prompt, answer, ...) of prepared rows
    sets = [trainer.train_dataset, trainer.eval_dataset]
    for data in [d for s in sets for d in (s.values() if isinstance(s, Mapping) else [s])]:
        columns = getattr(data, "column_names", None) or []
        for names in (["chosen", "rejected"], ["completion"]):  # pairs; KTO's examples
            found = [
                next((c for c in options if c in columns), None)
                for options in [_PROMPT_COLUMNS, *map(_answer_columns, names)]
            ]
            if None not in found:
                for row in zip(*(data[c] for c in found), strict=True):
                    read |= _read_forms(row, bos, eos)
    missed = sum(not _was_read(i.ids, read) for i in want)
    if not missed:
        return
    import trl

    raise UserError(
        f"stage {stage}: TRL {trl.__version__} did not tokenize the rows whose text "
        f"holds special-token strings through lmops ({missed} of {len(want)} read otherwise: "
        "DPOTrainer/KTOTrainer._prepare_dataset, ORPOTrainer.tokenize_row), so they would "
        "train on forged control tokens; install the TRL version lmops pins "
        "(pip install -e . or the lock file)"
    )
