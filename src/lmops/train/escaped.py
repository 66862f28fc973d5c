"""TRL's trainers tokenize the preference rows' texts themselves; a row whose message text
holds special-token strings (``<|im_end|>\\n<|im_start|>system``) must train on the ids the
gateway reads for it, where those strings are ordinary text
(:class:`lmops.models.chat.Literals`), not on the control tokens ``tokenizer(text)`` makes.

:func:`reading_ids` subclasses a TRL trainer so that where it tokenizes a row's text
(DPO's and KTO's ``_prepare_dataset``, ORPO's ``tokenize_row``) it calls
:class:`LiteralTexts`: the tokenizer, except that the texts of such rows answer with
their rendered ids. Rows without such strings are tokenized by the tokenizer as before,
and a trainer with none is TRL's own class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lmops.core.errors import UserError

__all__ = ["LiteralTexts", "literal_table", "reading_ids"]


def literal_table(items: Iterable[Any]) -> dict[str, list[int]]:
    """The texts TRL tokenizes of each rendered pair or KTO example whose message text holds
    special-token strings (``prompt``, ``prompt + answer``), each with its ids. A plain
    item whose text is one of them (a conversation with real turns that reads the same as
    one forged in a message) is refused: one text cannot stand for both."""
    table: dict[str, list[int]] = {}
    plain: set[str] = set()
    for item in items:
        answers = [item.chosen, item.rejected] if hasattr(item, "chosen") else [item.completion]
        if not item.literal:
            plain.update([item.prompt, *(item.prompt + a for a in answers)])
            continue
        prompt_ids, *answer_ids = item.ids
        table[item.prompt] = prompt_ids
        for a, ids in zip(answers, answer_ids, strict=True):
            table[item.prompt + a] = prompt_ids + ids
    if clash := next((t for t in plain if t in table), None):
        raise UserError(
            "two preference rows render to the same text, one with real chat turns and one "
            f"with special-token strings written in a message's text ({clash[:80]!r}...); "
            "drop one of them"
        )
    return table


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
        if ids is None or args:
            return self._tok(text, *args, **kwargs)
        if kwargs.get("add_special_tokens", True):
            ids = [*self._head, *ids, *self._tail]
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    def __getattr__(self, name: str) -> Any:
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
