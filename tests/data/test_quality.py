"""Quality filters and language id on literal English and Chinese documents."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.data.document import Document
from lmops.data.operators import langid
from lmops.data.ops import Filter, build_op, list_ops
from lmops.data.text import (
    count_sentences,
    dup_ngram_chars,
    en_words,
    resolve_lang,
    top_ngram,
    zh_words,
)

# ~120 words of ordinary English prose in three paragraphs.
GOOD_EN = """\
The city council met on Tuesday evening to discuss the new budget for the public library. \
Several residents spoke in favour of longer opening hours, and the head librarian explained \
that the current staff could not cover evenings without help.

After a long debate, the council agreed to fund two more positions for one year. The mayor \
said that the decision would be reviewed in the spring, when the first figures on visitor \
numbers are available.

Local schools have also asked to use the reading rooms for homework clubs. The library board \
will meet with the head teachers next month to agree on a schedule that works for everyone."""

# A Chinese news paragraph of about 300 characters, six sentences.
GOOD_ZH = (
    "新华社北京3月5日电，国务院总理在十四届全国人大二次会议上作政府工作报告时指出，"
    "今年发展主要预期目标是国内生产总值增长百分之五左右。城镇新增就业一千二百万人以上，"
    "城镇调查失业率百分之五点五左右。居民消费价格涨幅保持在百分之三左右，居民收入增长和经济增长同步。"
    "报告强调，要坚持稳中求进工作总基调，完整、准确、全面贯彻新发展理念，加快构建新发展格局。"
    "各地区各部门要把思想和行动统一到中央的决策部署上来，切实做好今年的经济工作。"
    "代表们在分组审议时表示，报告实事求是，目标明确，措施有力，为实现全年目标任务打下坚实基础。"
)

# Chinese junk: one character repeated; symbols only.
JUNK_ZH_REPEAT = "哈" * 300
JUNK_SYMBOLS = "★☆★☆！！！###@@@~~~" * 20


def verdict(op_name: str, text: str, **params: Any) -> str | None:
    """The reason ``op_name`` drops ``text`` for, or None when it keeps it."""
    op = build_op(op_name, **params)
    assert isinstance(op, Filter)
    doc = Document(text=text, id="d")
    kept = op.keep(doc)
    reason = doc.metadata.get("drop_reason")
    assert kept == (reason is None)
    return None if reason is None else reason.split(":", 1)[1]


def test_operators_registered_with_published_defaults() -> None:
    ops = list_ops()
    gq = ops["gopher_quality"].Params().model_dump()
    assert gq["min_doc_words"] == 50 and gq["max_doc_words"] == 100_000
    assert (gq["min_avg_word_length"], gq["max_avg_word_length"]) == (3, 10)
    assert gq["max_symbol_word_ratio"] == 0.1 and gq["min_stop_words"] == 2
    assert gq["max_bullet_lines_ratio"] == 0.9 and gq["max_ellipsis_lines_ratio"] == 0.3
    assert gq["min_alpha_words_ratio"] == 0.8 and gq["lang"] == "auto"
    gr = ops["gopher_repetition"].Params().model_dump()
    assert gr["top_n_grams"] == ((2, 0.2), (3, 0.18), (4, 0.16))
    assert [f for _, f in gr["dup_n_grams"]] == [0.15, 0.14, 0.13, 0.12, 0.11, 0.10]
    assert gr["dup_line_frac"] == gr["dup_para_frac"] == 0.3
    fw = ops["fineweb_quality"].Params().model_dump()
    assert (fw["line_punct_thr"], fw["short_line_thr"], fw["new_line_ratio"]) == (0.12, 0.67, 0.3)
    assert fw["char_duplicates_ratio"] == 0.01
    assert ops["c4_quality"].Params().model_dump()["min_num_sentences"] == 5
    assert ops["language_id"].Params().model_dump()["min_score"] == 0.65
    cr = ops["char_ratio_filter"].Params().model_dump()
    assert (cr["max_special_ratio"], cr["max_digit_ratio"]) == (0.4, 0.5)
    for name in ("gopher_quality", "gopher_repetition", "c4_quality", "fineweb_quality",
                 "language_id", "length_filter", "char_ratio_filter"):  # fmt: skip
        assert ops[name].__doc__


def test_bad_parameter_is_a_user_error() -> None:
    with pytest.raises(UserError, match="lang"):
        build_op("gopher_quality", lang="fr")
    with pytest.raises(UserError, match="min_score"):
        build_op("language_id", min_score=2)


# --- text utilities ----------------------------------------------------------------------


def test_en_words_follow_spacy_english_rules() -> None:
    assert en_words("I don't know... it's $5, e-mail me.") == (
        "I", "do", "n't", "know", "...", "it", "'s", "$", "5", ",", "e", "-", "mail", "me", ".",
    )  # fmt: skip
    assert en_words("Mr. Smith met Dr. Jones in the U.S. at 5pm (e.g. today).") == (
        "Mr.", "Smith", "met", "Dr.", "Jones", "in", "the", "U.S.", "at", "5", "pm", "(",
        "e.g.", "today", ")", ".",
    )  # fmt: skip
    assert en_words("See https://example.com/a?b=1. Cost: 10km, 3.5% or 1,000!") == (
        "See", "https://example.com/a?b=1", ".", "Cost", ":", "10", "km", ",", "3.5", "%",
        "or", "1,000", "!",
    )  # fmt: skip
    # "its", "ill" and "well" are words, not contractions; "cannot" is two tokens.
    its = ("its", "ill", "well", "can", "not", "wo", "n’t")
    assert en_words("its ill well cannot won’t") == its


def test_zh_words_segment_chinese() -> None:
    assert zh_words("我们今天去北京。") == ("我们", "今天", "去", "北京", "。")
    # Between the Chinese runs the English rules apply: a URL, a number, code stay whole.
    assert zh_words("详见https://example.com/a/b，约40,000人增长3.5%。用pandas的read_csv()") == (
        "详见", "https://example.com/a/b", "，", "约", "40,000", "人", "增长", "3.5", "%", "。",
        "用", "pandas", "的", "read_csv", "(", ")",
    )  # fmt: skip


def test_resolve_lang() -> None:
    assert resolve_lang(GOOD_EN, "auto") == "en"
    assert resolve_lang(GOOD_ZH, "auto") == "zh"
    assert resolve_lang("“Curly quotes” – and an é – stay English.", "auto") == "en"
    assert resolve_lang(GOOD_ZH, "en") == "en"


def test_count_sentences() -> None:
    assert count_sentences("Hello there. Mr. Smith is here! Is he? Yes.") == 4
    assert count_sentences("No terminal punctuation here") == 1
    assert count_sentences("今天下雨。明天晴天！后天呢？", "zh") == 3


def test_ngram_statistics() -> None:
    tokens = ("a", "b", "a", "b", "a", "b", "c")
    # "a b" occurs 3 times: 3 * len("a b").
    assert top_ngram(tokens, 2) == (9, 3)
    assert top_ngram(("x", "yy"), 3) == (0, 0)
    # The second "the cat sat on the" repeats the first: its characters count and the
    # scan jumps past it, so the overlapping "cat sat on the mat" is not counted again.
    words = "the cat sat on the mat and the cat sat on the mat".split()
    assert dup_ngram_chars(words, 5) == len("thecatsatonthe")
    # Three copies of "a b c d e": repeats at 5 and 10, then the scan is past the end.
    assert dup_ngram_chars(list("abcdeabcdeabcdef"), 5) == 10
    assert dup_ngram_chars(words[:7], 5) == 0


# --- gopher_quality ----------------------------------------------------------------------


def test_gopher_quality_keeps_prose_and_names_each_failure() -> None:
    assert verdict("gopher_quality", GOOD_EN) is None
    assert verdict("gopher_quality", "Far too short to be a page.") == "gopher_short_doc"
    assert verdict("gopher_quality", GOOD_EN, max_doc_words=60) == "gopher_long_doc"
    short_words = " ".join(["I am in it to do so as we go on up."] * 6)
    assert verdict("gopher_quality", short_words) == "gopher_below_avg_threshold"
    long_words = " ".join(["Internationalisation considerations notwithstanding, "
                           "telecommunications infrastructure modernisation continues."] * 10)  # fmt: skip
    assert verdict("gopher_quality", long_words) == "gopher_above_avg_threshold"
    hashes = GOOD_EN.replace(" the ", " #the #")
    assert verdict("gopher_quality", hashes) == "gopher_too_many_hashes"
    ellipses = GOOD_EN.replace(",", "...").replace(" the ", " the... ")
    assert verdict("gopher_quality", ellipses) == "gopher_too_many_ellipsis"
    bullets = "\n".join("- " + s for s in GOOD_EN.replace("\n\n", " ").split(". "))
    assert verdict("gopher_quality", bullets) == "gopher_too_many_bullets"
    trailing = "\n".join(s + " and so on..." for s in GOOD_EN.replace("\n\n", " ").split(". "))
    assert verdict("gopher_quality", trailing) == "gopher_too_many_end_ellipsis"
    numbers = GOOD_EN + " " + " ".join(str(n) for n in range(1000, 1040))
    assert verdict("gopher_quality", numbers) == "gopher_below_alpha_threshold"
    no_stop = " ".join(["Buy cheap shoes online today for fast shipping at best prices."] * 8)
    assert verdict("gopher_quality", no_stop) == "gopher_enough_stop_words"


def test_gopher_quality_scores_and_redecide() -> None:
    op = build_op("gopher_quality")
    assert isinstance(op, Filter)
    doc = Document(text=GOOD_EN, id="d")
    assert op.keep(doc)
    scores = doc.scores("gopher_quality")
    assert scores["zh"] == 0.0 and scores["stop_words"] == 8
    # The "too many words" bound is changed and re-applied without recomputing.
    stricter = build_op("gopher_quality", max_doc_words=scores["words"] - 1)
    assert isinstance(stricter, Filter)
    assert stricter.decide(scores) == "gopher_long_doc"


def test_gopher_quality_chinese() -> None:
    assert verdict("gopher_quality", GOOD_ZH) is None
    # datatrove's English-only rules see a handful of long "words" in Chinese text.
    assert verdict("gopher_quality", GOOD_ZH, lang="en") == "gopher_short_doc"
    assert verdict("gopher_quality", JUNK_ZH_REPEAT) == "gopher_enough_stop_words"
    spaced_out = " ".join(GOOD_ZH)  # one character at a time, to dodge keyword filters
    assert verdict("gopher_quality", spaced_out) == "gopher_below_avg_threshold"
    assert verdict("gopher_quality", JUNK_SYMBOLS) == "gopher_below_avg_threshold"
    assert verdict("gopher_quality", "今天天气很好。") == "gopher_short_doc"


# --- gopher_repetition -------------------------------------------------------------------


SENTENCES = [
    "Rain fell over the valley for most of the week.",
    "Farmers waited for a dry day to bring in the hay.",
    "The river rose above its banks near the old mill.",
    "Children stayed indoors and read books by the fire.",
    "On Sunday the clouds finally broke over the hills.",
    "Everyone went outside to enjoy the warm afternoon sun.",
]


def test_gopher_repetition_keeps_varied_text() -> None:
    assert verdict("gopher_repetition", GOOD_EN) is None
    assert verdict("gopher_repetition", GOOD_ZH) is None
    assert verdict("gopher_repetition", "") == "empty"


def test_gopher_repetition_reasons() -> None:
    a, b, c, d, e, f = SENTENCES
    assert verdict("gopher_repetition", "\n\n".join([a, b, a])) == "dup_para_frac"
    long_para = " ".join(SENTENCES)
    assert verdict("gopher_repetition", "\n\n".join([long_para, a, b, long_para])) == (
        "dup_para_char_frac"
    )
    assert verdict("gopher_repetition", "\n".join([a, b, c, a, b])) == "dup_line_frac"
    assert verdict("gopher_repetition", "\n".join([long_para, a, b, c, long_para])) == (
        "dup_line_char_frac"
    )
    cats = " ".join(f"the cat {v}." for v in ("sat", "ran", "ate", "hid", "slept", "won"))
    assert verdict("gopher_repetition", cats) == "top_2_gram"
    twice = " ".join([a, b, c, d, a + " " + b, e, f])
    assert verdict("gopher_repetition", twice) == "duplicated_5_n_grams"
    assert verdict("gopher_repetition", JUNK_ZH_REPEAT) == "top_2_gram"


# --- c4_quality --------------------------------------------------------------------------


def test_c4_quality_cleans_lines_of_kept_pages() -> None:
    text = "\n".join([
        "Home | About | Contact",
        "The museum reopened on Monday after two years of repairs.[1]",
        "Visitors queued outside before the doors opened at nine.",
        "Please enable JavaScript to use the ticket shop.",
        "The new wing holds paintings that were kept in storage. It is bright and quiet.",
        "Entry is free for children under twelve.",
        "This site uses cookies to improve your experience.",
        "Read more...",
        "Ok.",
    ])  # fmt: skip
    op = build_op("c4_quality")
    assert isinstance(op, Filter)
    doc = Document(text=text, id="d")
    assert op.keep(doc)
    assert doc.text == "\n".join([
        "The museum reopened on Monday after two years of repairs.",
        "Visitors queued outside before the doors opened at nine.",
        "The new wing holds paintings that were kept in storage. It is bright and quiet.",
        "Entry is free for children under twelve.",
    ])  # fmt: skip
    scores = doc.scores("c4_quality")
    assert scores["sentences"] == 5 and scores["lines_kept"] == 4
    assert scores["dropped_javascript"] == 1 and scores["dropped_policy"] == 1
    assert scores["dropped_no_terminal_punct"] == 2 and scores["dropped_too_few_words"] == 1


def test_c4_quality_page_rules() -> None:
    assert verdict("c4_quality", GOOD_EN) is None
    assert verdict("c4_quality", "Too short. Only two sentences here.") == "too_few_sentences"
    assert verdict("c4_quality", GOOD_EN + "\nLorem ipsum dolor sit amet, elit.") == "lorem_ipsum"
    assert verdict("c4_quality", GOOD_EN + "\nThe code is function f() { return 1; }.") == (
        "curly_bracket"
    )
    # A brace on a line that is removed anyway (no end punctuation) does not drop the page.
    assert verdict("c4_quality", GOOD_EN + "\nvar x = { a: 1 }") is None


def test_c4_quality_chinese() -> None:
    op = build_op("c4_quality")
    assert isinstance(op, Filter)
    doc = Document(text=GOOD_ZH + "\n首页 | 新闻 | 联系我们", id="d")
    assert op.keep(doc)
    assert doc.text == GOOD_ZH
    assert verdict("c4_quality", GOOD_ZH, lang="en") == "too_few_sentences"


# --- fineweb_quality ---------------------------------------------------------------------


def test_fineweb_quality() -> None:
    assert verdict("fineweb_quality", GOOD_EN) is None
    assert verdict("fineweb_quality", GOOD_ZH) is None
    menu = "\n".join(["Home", "News and events", "Contact us", "Opening hours", "Privacy"])
    assert verdict("fineweb_quality", menu) == "line_punct_ratio"
    short = "\n".join(["Yes.", "No.", "Maybe later.", GOOD_EN.split("\n")[0], "Fine."])
    assert verdict("fineweb_quality", short) == "short_line_ratio"
    repeated = (
        GOOD_EN + "\nShare this article on social media.\nShare this article on social media."
    )
    assert verdict("fineweb_quality", repeated) == "char_dup_ratio"
    # The paper's looser 0.1 keeps it.
    assert verdict("fineweb_quality", repeated, char_duplicates_ratio=0.1) is None
    listing = "\n\n".join([
        "Telecommunications internationalisation.",
        "Electroencephalography instrumentation.",
        "Counterrevolutionaries disenfranchisement.",
        "Interdisciplinary characterisation.",
    ])  # fmt: skip
    assert verdict("fineweb_quality", listing) == "list_ratio"
    assert verdict("fineweb_quality", "\n \n") == "empty"


# --- length_filter and char_ratio_filter --------------------------------------------------


def test_length_filter() -> None:
    assert verdict("length_filter", GOOD_EN) is None
    assert verdict("length_filter", "Hi there") == "too_short"
    assert verdict("length_filter", GOOD_EN, max_chars=100) == "too_long"
    assert verdict("length_filter", GOOD_EN, min_words=200) == "too_few_words"
    assert verdict("length_filter", GOOD_EN, max_words=50) == "too_many_words"
    # Chinese words are counted by segmentation, not by spaces.
    assert verdict("length_filter", GOOD_ZH, min_words=100) is None
    assert verdict("length_filter", GOOD_ZH, min_words=100, lang="en") == "too_few_words"


def test_char_ratio_filter() -> None:
    assert verdict("char_ratio_filter", GOOD_EN) is None
    assert verdict("char_ratio_filter", GOOD_ZH) is None
    assert verdict("char_ratio_filter", JUNK_SYMBOLS) == "special_ratio_too_high"
    assert verdict("char_ratio_filter", "Call 555-0100 555-0199 555-0123 555-0142") == (
        "digit_ratio_too_high"
    )
    assert verdict("char_ratio_filter", GOOD_EN, min_cjk_ratio=0.5) == "cjk_ratio_too_low"
    assert verdict("char_ratio_filter", GOOD_ZH, max_cjk_ratio=0.5) == "cjk_ratio_too_high"
    assert verdict("char_ratio_filter", "") == "empty"
    op = build_op("char_ratio_filter")
    assert isinstance(op, Filter)
    scores = op.score(Document(text="ab 12!", id="d"))
    assert scores["alpha_ratio"] == scores["digit_ratio"] == 2 / 6
    assert scores["special_ratio"] == scores["whitespace_ratio"] == 1 / 6


# --- language_id -------------------------------------------------------------------------

PARAGRAPHS = {
    "en": "The committee will meet next week to discuss the new budget proposal.",
    "zh": "国务院总理在政府工作报告中指出，今年经济增长预期目标为百分之五左右。",
    "ja": "東京都は来週から新しい交通規制を導入すると発表しました。",
    "fr": "Le comité se réunira la semaine prochaine pour discuter du nouveau budget.",
    "de": "Der Ausschuss wird sich nächste Woche treffen, um den Haushalt zu besprechen.",
}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(langid, "_identifier", None)  # load the model under these rules


@pytest.mark.usefixtures("no_network")
def test_language_id_offline_distinguishes_languages() -> None:
    op = build_op("language_id")
    assert isinstance(op, Filter)
    for lang, text in PARAGRAPHS.items():
        doc = Document(text=text, id=lang)
        assert op.keep(doc), lang
        assert doc.metadata["lang"] == lang
        assert doc.metadata["lang_score"] >= 0.9


def test_language_id_keeps_only_listed_languages() -> None:
    assert verdict("language_id", PARAGRAPHS["zh"], languages=["zh", "en"]) is None
    assert verdict("language_id", GOOD_ZH, languages=["zh"]) is None
    assert verdict("language_id", PARAGRAPHS["fr"], languages=["zh", "en"]) == "lang_not_allowed"
    assert verdict("language_id", "12345 !!! 678", languages=["en"]) == "lang_not_allowed"
    assert verdict("language_id", "12345 !!! 678") == "lang_low_score"
    # English, but not confidently enough for a 0.99 bar.
    hello = "Hello there, how are you today?"
    assert verdict("language_id", hello, languages=["en"], min_score=0.99) == "lang_low_score"
