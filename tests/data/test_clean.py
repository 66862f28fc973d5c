"""Cleaning operators on literal Chinese and English documents."""

from __future__ import annotations

import pickle
import random
import time
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.data.document import Document
from lmops.data.operators.variants import load_variant_table
from lmops.data.ops import build_op, list_ops


def run(op_name: str, text: str, **params: Any) -> str:
    doc = Document(text=text, id="doc-1")
    out = build_op(op_name, **params).apply(doc)
    assert out.id == "doc-1"
    return out.text


def test_operators_are_registered_with_published_defaults() -> None:
    ops = list_ops()
    defaults = {
        "clean_unicode": {"form": "NFKC", "keep": ""},
        "clean_whitespace": {"max_blank_lines": 1, "keep_indentation": False},
        "clean_html": {
            "drop_content": ("script", "style", "noscript", "template", "svg"),
            "collapse_whitespace": True,
        },
        "fix_mojibake": {},
        "zh_convert": {"direction": "t2s"},
        "normalize_variants": {"mapping_file": None, "builtin": True},
        "regex_replace": {"rules": ()},
        "strip_urls_emails": {"urls": True, "emails": True, "replacement": ""},
        "pii_mask": {"types": None, "placeholder_format": "<{type}>"},
    }
    for name, expected in defaults.items():
        assert ops[name].Params().model_dump() == expected, name
        assert ops[name].__doc__, name


# ------------------------------------------------------------------------- clean_unicode
def test_clean_unicode_removes_invisible_and_control_characters() -> None:
    text = "\ufeff你\u200b好\u200c世\u200d界\u00ad！\u202eevil\u202c\x07\tTab\r\nnext\u2028line"
    assert run("clean_unicode", text) == "你好世界!evil\tTab\nnext\nline"


def test_clean_unicode_nfkc_folds_compatibility_forms() -> None:
    text = "Ｈｅｌｌｏ，ＷＯＲＬＤ１２３ ﬁle ①\u3000中文。、"
    assert run("clean_unicode", text) == "Hello,WORLD123 file 1 中文。、"


def test_clean_unicode_form_none_and_nfc() -> None:
    assert run("clean_unicode", "Ａ\u200b１，", form=None) == "Ａ１，"
    assert run("clean_unicode", "e\u0301 Ａ", form="NFC") == "é Ａ"


def test_clean_unicode_keep_spares_listed_characters() -> None:
    family = "👨\u200d👩\u200d👧"
    assert run("clean_unicode", family + "\u200b") == "👨👩👧"
    assert run("clean_unicode", family + "\u200b", keep="\u200d") == family


@pytest.mark.parametrize("form", ["NFC", "NFD", "NFKC", "NFKD"])
def test_clean_unicode_normalises_exactly_like_unicodedata(form: str) -> None:
    # clean_unicode normalises only the runs of characters that can change; on random
    # mixes of combining marks, Hangul jamo, Indic and Tibetan signs, compatibility forms
    # and CJK, the result must equal normalising the whole string.
    blocks = [
        (0x20, 0x250), (0x300, 0x370), (0x590, 0x600), (0x900, 0x980), (0xB80, 0xC00),
        (0xE00, 0xE80), (0xF00, 0xFD0), (0x1100, 0x1200), (0x1E00, 0x2000), (0x3000, 0x3100),
        (0x3300, 0x3400), (0x4E00, 0x4E40), (0xAC00, 0xAC80), (0xF900, 0xF940),
        (0xFF00, 0xFFF0), (0x1D400, 0x1D480),
    ]  # fmt: skip
    pool = [
        chr(cp)
        for lo, hi in blocks
        for cp in range(lo, hi)
        if unicodedata.category(chr(cp)) not in ("Cc", "Cf", "Cs", "Zl", "Zp")
        and chr(cp) not in "\u115f\u1160\u3164\uffa0"  # Hangul fillers: removed
    ]
    rng = random.Random(7)
    for _ in range(1500):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 24)))
        assert run("clean_unicode", text, form=form) == unicodedata.normalize(form, text), text


def test_clean_unicode_hangul_filler_and_lone_surrogate() -> None:
    assert run("clean_unicode", "name:\u3164\u3164 ok\ud800") == "name: ok"


# ---------------------------------------------------------------------- clean_whitespace
def test_clean_whitespace_english_and_chinese() -> None:
    text = "  Hello   world \t again  \n\n\n\n第二段　　中文内容，不加空格。  \r\n\n\n\n  end  \n"
    assert run("clean_whitespace", text) == (
        "Hello world again\n\n第二段 中文内容，不加空格。\n\nend"
    )


def test_clean_whitespace_keeps_single_blank_lines_and_chinese() -> None:
    text = "第一段。\n\n第二段。\n第三行。"
    assert run("clean_whitespace", text) == text


def test_clean_whitespace_max_blank_lines_zero() -> None:
    assert run("clean_whitespace", "a\n\n\nb\n\nc", max_blank_lines=0) == "a\nb\nc"


def test_clean_whitespace_keep_indentation() -> None:
    code = "def f():\n    return  1   \n\n\n\n\tx =  2"
    assert (
        run("clean_whitespace", code, keep_indentation=True) == "def f():\n    return 1\n\n\tx = 2"
    )


def test_clean_whitespace_rejects_negative_blank_lines() -> None:
    with pytest.raises(UserError, match="parameter 'max_blank_lines'"):
        build_op("clean_whitespace", max_blank_lines=-1)


# ---------------------------------------------------------------------------- clean_html
HTML_DOC = """<!DOCTYPE html>
<html>
  <head>
    <title>新闻标题</title>
    <style>p { color: red; }</style>
    <script>var secret = "dropped";</script>
  </head>
  <body>
    <div>第一行</div>
    <div>Tom &amp; Jerry&nbsp;show</div>
    <p>中文实体：&#x4e2d;&#25991; &lt;tag&gt;</p>
    <p>Para <b>two</b>
       continues here.</p>
    <ul><li>one</li><li>two</li></ul>
    line<br>break<br/>again
    <table><tr><th>名称</th><th>价格</th></tr><tr><td>苹果</td><td>5</td></tr></table>
    <pre>  keep
    this</pre>
    <!-- a comment -->
    <noscript>Please enable JavaScript</noscript>
  </body>
</html>"""


def test_clean_html_document() -> None:
    assert run("clean_html", HTML_DOC) == (
        "新闻标题\n"
        "第一行\n"
        "Tom & Jerry show\n\n"
        "中文实体：中文 <tag>\n\n"
        "Para two continues here.\n\n"
        "one\ntwo\n\n"
        "line\nbreak\nagain\n\n"
        "名称\t价格\n苹果\t5\n\n"
        "  keep\n    this"
    )


def test_clean_html_plain_text_only_unescapes() -> None:
    assert (
        run("clean_html", "Tom &amp; Jerry\n\nsecond  paragraph")
        == "Tom & Jerry\n\nsecond  paragraph"
    )
    assert run("clean_html", "if a < b and c > d") == "if a < b and c > d"


def test_clean_html_without_collapsing_whitespace() -> None:
    text = "First <b>bold</b> line\nsecond line\n\nthird"
    assert (
        run("clean_html", text, collapse_whitespace=False)
        == "First bold line\nsecond line\n\nthird"
    )
    assert run("clean_html", text) == "First bold line second line third"


def test_clean_html_drop_content_param() -> None:
    text = "<p>keep</p><aside>side note</aside><p>this</p>"
    assert run("clean_html", text, drop_content=["aside"]) == "keep\n\nthis"


# -------------------------------------------------------------------------- fix_mojibake
@pytest.mark.parametrize(
    ("broken", "fixed"),
    [
        ("cafÃ©", "café"),
        ("ä¸­æ–‡", "中文"),
        ("è¿™æ˜¯ä¸€ä¸ªæµ‹è¯•", "这是一个测试"),
        ("The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.", "The Mona Lisa doesn’t have eyebrows."),
        ("正常中文。cafÃ© au lait", "正常中文。café au lait"),
    ],
)
def test_fix_mojibake_repairs(broken: str, fixed: str) -> None:
    assert run("fix_mojibake", broken) == fixed


@pytest.mark.parametrize(
    "text", ["普通中文，没有问题。", "naïve café “quoted”", "SÃO PAULO", "¡Hola! ¿Qué tal?"]
)
def test_fix_mojibake_leaves_correct_text(text: str) -> None:
    assert run("fix_mojibake", text) == text


# ---------------------------------------------------------------------------- zh_convert
def test_zh_convert_t2s_is_phrase_aware() -> None:
    assert (
        run("zh_convert", "漢字轉換，頭髮乾燥以後，皇后說話。")
        == "汉字转换，头发干燥以后，皇后说话。"
    )


def test_zh_convert_other_directions() -> None:
    assert run("zh_convert", "头发干燥", direction="s2t") == "頭髮乾燥"
    assert run("zh_convert", "軟體和滑鼠", direction="tw2sp") == "软件和鼠标"


def test_zh_convert_leaves_other_text_and_surrogates() -> None:
    assert run("zh_convert", "Hello, world! 123") == "Hello, world! 123"
    assert run("zh_convert", "漢\ud800字") == "汉\ud800字"


def test_zh_convert_rejects_unknown_direction() -> None:
    with pytest.raises(UserError, match="parameter 'direction'"):
        build_op("zh_convert", direction="x2y")


# -------------------------------------------------------------------- normalize_variants
@pytest.mark.parametrize(
    ("variant", "standard"),
    [
        ("吥", "不"),
        ("哋", "地"),
        ("孒", "子"),
        ("莪", "我"),
        ("伱", "你"),
        ("妳", "你"),
        ("嘚", "的"),
        ("緈", "幸"),
        ("餹", "糖"),
    ],
)
def test_normalize_variants_martian_characters(variant: str, standard: str) -> None:
    assert run("normalize_variants", variant) == standard


def test_normalize_variants_martian_sentence() -> None:
    assert (
        run("normalize_variants", "莪嘚伱很恏，緈鍢嘚餹，吥湜嗎？")
        == "我的你很好，幸福的糖，不是嗎？"
    )


def test_normalize_variants_protects_real_words() -> None:
    text = "他又在嘚瑟了；卟啉是一种化合物；我哋去饮茶。"
    assert run("normalize_variants", text) == text


def test_normalize_variants_ornaments_and_circled_ideographs() -> None:
    assert run("normalize_variants", "☆彡㊣品保证彡") == "☆正品保证"


def test_normalize_variants_bopomofo_particles_only_after_han() -> None:
    assert run("normalize_variants", "我ㄉ書好看ㄇ？好ㄅ") == "我的書好看吗？好吧"
    assert run("normalize_variants", "注音：ㄅㄆㄇㄈ") == "注音：ㄅㄆㄇㄈ"


def test_normalize_variants_styled_latin_and_radicals() -> None:
    text = "Ｆｕｌｌ ⓒⓘⓡⓒⓛⓔ 𝐛𝐨𝐥𝐝 𝔣𝔯𝔞𝔨𝔱𝔲𝔯 🅝🅔🅖 ⼤家好"
    assert run("normalize_variants", text) == "Full circle bold fraktur NEG 大家好"


def test_normalize_variants_keeps_punctuation_and_enumerators() -> None:
    text = "第一，①首先（注意）！"
    assert run("normalize_variants", text) == text


def test_normalize_variants_latin_homoglyphs_only_in_latin_words() -> None:
    # "Pаypal" and "Аpple" carry Cyrillic а/А; Russian and Greek words stay as they are.
    text = "Login to Pаypal or Аpple now. Москва — Αθήνα. Größe"
    assert run("normalize_variants", text) == "Login to Paypal or Apple now. Москва — Αθήνα. Größe"


def test_normalize_variants_extra_mapping_file(tmp_path: Path) -> None:
    extra = tmp_path / "extra.tsv"
    extra.write_text(
        "# my additions\n酱紫\t这样子\n嘚\t得\nⓧ\tx\tany\nɑ\ta\tlatin\n", encoding="utf-8"
    )
    text = "酱紫嘚 ⓧ ɑpple 莪"
    assert run("normalize_variants", text, mapping_file=str(extra)) == "这样子得 x apple 我"
    assert (
        run("normalize_variants", text, mapping_file=str(extra), builtin=False)
        == "这样子得 x apple 莪"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("ok\tfine\nbroken line\n", r"bad\.tsv:2: expected SOURCE<TAB>TARGET"),
        ("a\tb\tnowhere\n", r"bad\.tsv:1: unknown scope 'nowhere'"),
        ("ab\tc\tlatin\n", r"bad\.tsv:1: scope 'latin' maps single characters only"),
    ],
)
def test_normalize_variants_bad_mapping_file(tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        build_op("normalize_variants", mapping_file=str(bad))


def test_normalize_variants_missing_mapping_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read variant mapping file"):
        build_op("normalize_variants", mapping_file=str(tmp_path / "missing.tsv"))


def test_shipped_variant_table() -> None:
    table = load_variant_table()
    assert table.anywhere["莪"] == "我"
    assert table.anywhere["嘚瑟"] == "嘚瑟"
    assert table.anywhere["彡"] == ""
    assert table.latin["а"] == "a"
    assert table.after_han["ㄉ"] == "的"
    listed = load_variant_table(builtin=False)
    assert listed.anywhere == {}
    # A few hundred listed entries plus the Unicode-derived ones.
    assert len(table.anywhere) + len(table.latin) + len(table.after_han) > 1000


def test_shipped_entries_apply_and_are_idempotent() -> None:
    table = load_variant_table()
    op = build_op("normalize_variants")

    def norm(text: str) -> str:
        return op.apply(Document(text=text, id="x")).text

    for src, dst in table.anywhere.items():
        # A variant ends where its target ends (⼺ -> 彡 -> deleted), and stays there.
        assert norm(src) == norm(dst), src
        assert norm(norm(src)) == norm(src), src
    assert norm("⼺") == ""


def test_normalize_variants_is_fast_and_linear() -> None:
    op = build_op("normalize_variants")
    doc = "我们公司成立于2015年，总部位于深圳。The quick brown fox. " * 30
    start = time.perf_counter()
    for _ in range(20):
        op.apply(Document(text=doc, id="x"))
    assert (time.perf_counter() - start) / 20 < 0.01  # ~0.1 ms here
    start = time.perf_counter()
    op.apply(Document(text="Pаypal" + "a" * 100_000, id="x"))  # one long spoofed "word"
    assert time.perf_counter() - start < 1.0


def test_normalize_variants_operator_pickles() -> None:
    op = build_op("normalize_variants")
    clone = pickle.loads(pickle.dumps(op))
    assert clone.apply(Document(text="莪", id="x")).text == "我"


# ------------------------------------------------------------------------- regex_replace
def test_regex_replace_rules_in_order_with_flags_and_groups() -> None:
    rules = [
        {"pattern": r"(\d{4})-(\d{2})-(\d{2})", "replacement": r"\3/\2/\1"},
        {"pattern": "hello", "replacement": "你好", "flags": "i"},
        {"pattern": r"^#.*$\n?", "flags": "m"},
    ]
    text = "# header\nHELLO on 2024-05-01\n# note\nbye"
    assert run("regex_replace", text, rules=rules) == "你好 on 01/05/2024\nbye"


def test_regex_replace_without_rules_is_identity() -> None:
    assert run("regex_replace", "不变 unchanged") == "不变 unchanged"


def test_regex_replace_invalid_pattern_names_the_rule() -> None:
    rules = [{"pattern": "ok"}, {"pattern": "(unclosed"}]
    with pytest.raises(UserError, match=r"regex_replace: rule 1: invalid pattern '\(unclosed'"):
        build_op("regex_replace", rules=rules)


def test_regex_replace_invalid_replacement_names_the_rule() -> None:
    with pytest.raises(UserError, match=r"rule 0: invalid replacement '\\\\2'"):
        build_op("regex_replace", rules=[{"pattern": "(a)", "replacement": r"\2"}])


def test_regex_replace_bad_flags_and_fields() -> None:
    with pytest.raises(UserError, match=r"parameter 'rules\.0\.flags'.*unknown flag letters 'q'"):
        build_op("regex_replace", rules=[{"pattern": "a", "flags": "q"}])
    with pytest.raises(UserError, match=r"parameter 'rules\.0\.replace'"):
        build_op("regex_replace", rules=[{"pattern": "a", "replace": "b"}])


# --------------------------------------------------------------------- strip_urls_emails
MIXED = (
    "访问https://example.com/a?b=1获取资料，或见(see https://en.wikipedia.org/wiki/Foo_(bar)). "
    "Mail me: zhang.san@example.com. 官网www.example.cn，下载ftp://files.example.org/x.zip。"
)


def test_strip_urls_emails_defaults() -> None:
    assert run("strip_urls_emails", MIXED) == ("访问获取资料，或见(see ). Mail me: . 官网，下载。")


def test_strip_urls_only_with_replacement() -> None:
    assert run("strip_urls_emails", MIXED, emails=False, replacement="<URL>") == (
        "访问<URL>获取资料，或见(see <URL>). Mail me: zhang.san@example.com. 官网<URL>，下载<URL>。"
    )


def test_strip_emails_only() -> None:
    text = "Contact 客服kefu@shop.com.cn or visit https://shop.com.cn/help."
    assert run("strip_urls_emails", text, urls=False, replacement="[email]") == (
        "Contact 客服[email] or visit https://shop.com.cn/help."
    )


def test_strip_url_containing_an_address_once() -> None:
    text = "see https://user@example.com/x now"
    assert run("strip_urls_emails", text, replacement="_") == "see _ now"
