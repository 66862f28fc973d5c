from __future__ import annotations

import json

import pytest

from lmops.core.errors import UserError
from lmops.core.jsonl import json_objects


def test_line_separators_inside_json_strings_do_not_split_rows() -> None:
    text = json.dumps({"q": "a\u2028b\u0085c"}, ensure_ascii=False) + "\n\n" + '{"q": 2}\n'
    assert [(n, w, r["q"]) for n, w, r in json_objects(text, "s.jsonl")] == [
        (1, "s.jsonl:1", "a\u2028b\u0085c"),
        (3, "s.jsonl:3", 2),
    ]
    with pytest.raises(UserError, match=r"s\.jsonl:2: expected a JSON object, got list"):
        list(json_objects('{"q": 1}\n[1]\n', "s.jsonl"))
