"""Chinese judged the way its English original is: Gopher rules in units where the English
thresholds mean the same, ordinary Chinese kept, Chinese junk still dropped.

The pairs below are one text in Chinese and in English (written for these tests); each is
kept or dropped on both sides alike. benchmarks/gopher_cjk_bench.py measures the same on
1,130 parallel Alpaca pairs.
"""

from __future__ import annotations

import pytest

from lmops.data.document import Document
from lmops.data.ops import Filter, build_op
from lmops.data.text import ZH_CHARS_PER_WORD, zh_ngram_size, zh_size, zh_units, zh_words
from tests.data.test_quality import GOOD_ZH

# An answer that repeats its question, as instruction data does: jieba 4-grams with spaces
# put the Chinese at 0.185 of the text (over 0.16); the English is at 0.087.
ECHO = (
    "这段话的主要观点是什么？\n\n"
    "城市公园不仅为居民提供了休闲和运动的场所，还能改善空气质量、降低夏季气温。"
    "越来越多的城市开始把公园建设纳入长期规划。\n\n"
    "这段话的主要观点是，城市公园对居民的生活和城市环境都有好处，因此越来越受到城市规划的重视。",
    "What is the main point of this passage?\n\n"
    "City parks not only give residents a place to relax and exercise, they also improve air "
    "quality and lower summer temperatures. More and more cities are making parks part of "
    "their long-term plans.\n\n"
    "The main point of this passage is that city parks benefit both the lives of residents and "
    "the urban environment, so they are receiving more and more attention in city planning.",
)
# Prose that quotes a link: jieba alone cut the URL into 23 tokens, 12 of them symbols.
LINK = (
    "总结这篇文章：https://www.example.com/2023/05/17/city-library-opening.html\n\n"
    "文章介绍了市立图书馆新馆开放的情况。新馆面积比旧馆大了一倍，增加了儿童阅览区和自习室，"
    "开放时间也延长到晚上九点。馆长表示，图书馆希望成为市民学习和交流的公共空间，"
    "并计划在明年推出更多面向老年人的数字技能课程。",
    "Summarize this article: https://www.example.com/2023/05/17/city-library-opening.html\n\n"
    "The article describes the opening of the new city library. The new building is twice the "
    "size of the old one, adds a children's reading area and study rooms, and stays open until "
    "nine in the evening. The head librarian said the library hopes to become a public space "
    "where residents can learn and meet, and plans to offer more digital skills courses for "
    "older people next year.",
)
# Hesitant dialogue: many ellipses and quotes. datatrove's rules drop the English (too
# few alphabetic tokens); the Chinese must be dropped for the same reason, not for
# "too many ellipses" because ...... is two characters.
DIALOGUE = (
    "“我……我不知道该怎么说，”她低声说，“那天晚上……我们都在等你。”\n"
    "他沉默了很久，才开口：“对不起……路上出了事故，手机也没电了……我没办法通知你们。”\n"
    "“没关系，”她摇摇头，“你平安回来就好。大家都很担心……尤其是妈妈，她一夜都没有睡。”",
    '"I... I don\'t know how to say it," she whispered. "That night... we were all waiting for '
    'you."\nHe was silent for a long time before he spoke: "I\'m sorry... there was an accident '
    'on the road, and my phone was dead... I had no way to let you know."\n"It\'s all right," '
    'she said, shaking her head. "What matters is that you came back safe. Everyone was so '
    "worried... especially Mum, she didn't sleep all night.\"",
)
# A recipe: as many figures and units as words. Dropped on both sides.
QUANTITIES = (
    "列出制作煎饼所需的材料和步骤。\n\n"
    "制作煎饼需要以下材料：面粉200克、鸡蛋2个、牛奶250毫升、白糖15克、盐1克、黄油30克。"
    "先把面粉、白糖和盐混合，再加入鸡蛋和牛奶搅拌成面糊。平底锅加热后刷一层黄油，倒入一勺面糊，"
    "煎到两面金黄即可。",
    "List the ingredients and steps needed to make pancakes.\n\n"
    "To make pancakes you need the following ingredients: 200 g of flour, 2 eggs, 250 ml of "
    "milk, 15 g of sugar, 1 g of salt and 30 g of butter. First mix the flour, sugar and salt, "
    "then add the eggs and milk and stir into a batter. Heat a frying pan, brush it with "
    "butter, pour in a ladle of batter and fry until both sides are golden.",
)
# Chinese with English names, acronyms and a link (56 % CJK, so the Chinese rules).
MIXED = (
    "大语言模型（LLM）的训练通常分为预训练和微调两个阶段。预训练阶段使用海量的网页文本，例如 Common "
    "Crawl 和 Wikipedia，让模型学习语言的统计规律；微调阶段则使用人工标注的指令数据，例如 Alpaca 和 "
    "ShareGPT，让模型学会按照用户的要求回答问题。近年来，RLHF 和 DPO 等方法也被广泛用于对齐模型的行为，"
    "相关代码可以在 https://github.com/huggingface/trl 找到。",
    "Training a large language model (LLM) usually has two stages: pre-training and fine-tuning. "
    "Pre-training uses huge amounts of web text, such as Common Crawl and Wikipedia, so that the "
    "model learns the statistics of language; fine-tuning uses human-written instruction data, "
    "such as Alpaca and ShareGPT, so that the model learns to answer questions the way users ask. "
    "In recent years, methods such as RLHF and DPO have also been widely used to align the "
    "behaviour of models, and code for them can be found at https://github.com/huggingface/trl.",
)
NEWS = GOOD_ZH  # ordinary news prose


def verdict(op_name: str, text: str) -> tuple[str | None, dict[str, float]]:
    """(the reason ``op_name`` drops ``text`` for or None, its scores)."""
    op = build_op(op_name)
    assert isinstance(op, Filter)
    doc = Document(text=text, id="d")
    op.keep(doc)
    reason = doc.metadata.get("drop_reason")
    return (None if reason is None else reason.split(":", 1)[1]), doc.scores(op_name)


def gopher(text: str) -> str | None:
    """gopher_quality then gopher_repetition, as a recipe runs them: the first reason."""
    return verdict("gopher_quality", text)[0] or verdict("gopher_repetition", text)[0]


# --- units -------------------------------------------------------------------------------


def test_zh_units_are_characters_and_ngrams_as_long_as_english_ones() -> None:
    assert zh_units(zh_words("“巴拿马运河，建于1914年。”")) == [
        "巴", "拿", "马", "运", "河，", "建", "于", "1914", "年。”",
    ]  # fmt: skip
    assert [zh_ngram_size(n) for n in range(2, 11)] == [3, 5, 6, 8, 9, 11, 12, 14, 15]


def test_zh_size_counts_han_in_english_word_equivalents() -> None:
    assert ZH_CHARS_PER_WORD == 1.5
    tokens = zh_words("巴拿马运河于1914年完工……")
    assert tokens == ("巴拿马运河", "于", "1914", "年", "完工", "……")
    # 9 Han characters are 6 words, all alphabetic; "1914" and "……" one word each.
    assert zh_size(tokens) == pytest.approx((8.0, 6.0))
    assert zh_size(()) == (0.0, 0.0)


# --- gopher_quality ----------------------------------------------------------------------


def test_link_in_chinese_prose_is_one_word_as_in_english() -> None:
    zh, en = LINK
    assert "https://www.example.com/2023/05/17/city-library-opening.html" in zh_words(zh)
    assert gopher(en) is None
    assert gopher(zh) is None  # was gopher_below_alpha_threshold (0.74)


def test_mixed_chinese_and_english_is_kept_as_its_english_original() -> None:
    zh, en = MIXED
    assert verdict("gopher_quality", zh)[1]["zh"] == 1.0
    assert gopher(zh) is None
    assert gopher(en) is None


def test_chinese_ellipsis_is_one_mark() -> None:
    zh, en = DIALOGUE
    reasons = {verdict("gopher_quality", t)[0] for t in DIALOGUE}
    assert reasons == {"gopher_below_alpha_threshold"}
    scores = verdict("gopher_quality", zh)[1]
    # 5 ellipses in 85 word equivalents; counted per character it was 10 in 90 tokens,
    # over the 0.1 of gopher_too_many_ellipsis.
    assert scores["ellipsis_ratio"] == pytest.approx(5 / 85)
    assert verdict("gopher_quality", en)[1]["ellipsis_ratio"] < 0.1


def test_figures_weigh_the_same_in_both_languages() -> None:
    # datatrove drops the English recipe: a fifth of its tokens are figures and commas.
    assert {verdict("gopher_quality", t)[0] for t in QUANTITIES} == {"gopher_below_alpha_threshold"}
    assert gopher(NEWS) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("【热卖】★★★特价！！！→→→点击购买☆☆☆￥99元包邮※※※" * 8, "gopher_below_alpha_threshold"),
        (
            " | ".join(["首页", "新闻中心", "产品展示", "联系我们", "关于我们", "网站地图"] * 5),
            "gopher_below_alpha_threshold",
        ),
        (
            NEWS[:80]
            + "\n"
            + "\n".join(
                [
                    "版权所有 © 2024 某某科技有限公司 保留所有权利",
                    "京ICP备12345678号-1 京公网安备11010502030000号",
                    "地址：北京市海淀区中关村大街1号 邮编：100080",
                    "电话：010-12345678 邮箱：info@example.com",
                ]
                * 3
            ),
            "gopher_below_alpha_threshold",
        ),
        (
            " ".join(["减肥药", "减肥茶", "快速减肥", "减肥方法", "减肥食谱"] * 10),
            "gopher_enough_stop_words",
        ),
        (" ".join(NEWS), "gopher_below_avg_threshold"),  # spaced out to dodge keyword filters
        ("哈" * 300, "gopher_enough_stop_words"),
    ],
    ids=["symbol soup", "menu", "footer boilerplate", "keyword stuffing", "spaced out", "one char"],
)
def test_chinese_junk_is_still_dropped_by_gopher_quality(text: str, reason: str) -> None:
    assert verdict("gopher_quality", text)[0] == reason


# --- gopher_repetition -------------------------------------------------------------------


def test_question_echoed_in_the_answer_is_judged_as_in_english() -> None:
    zh, en = ECHO
    assert gopher(en) is None
    assert gopher(zh) is None  # was top_4_gram
    top4 = {
        lang: verdict("gopher_repetition", t)[1]["top_4_gram"]
        for lang, t in zip("ze", ECHO, strict=True)
    }
    assert top4["z"] == pytest.approx(top4["e"], abs=0.02)


def test_a_sentence_said_five_times_is_dropped_in_both_languages() -> None:
    for text, end, sep in ((LINK[0], "。", ""), (LINK[1], ". ", " ")):
        question, answer = text.split("\n\n")
        first = answer.split(end)[0] + end.strip()
        stuttered = question + "\n\n" + sep.join([first] * 5) + answer[len(first) :]
        assert verdict("gopher_repetition", text)[0] is None
        assert verdict("gopher_repetition", stuttered)[0] is not None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("欢迎访问本站，祝您购物愉快！\n" * 6 + NEWS, "dup_line_frac"),
        (NEWS[:100] + "\n\n" + NEWS[100:] + "\n\n" + NEWS[:100], "dup_para_frac"),
        ("最新优惠活动火热进行中，点击立即购买！" * 8, "top_3_gram"),
        (NEWS + "限时特价，全场包邮，点击购买。" * 4, "duplicated_6_n_grams"),
        (NEWS + NEWS, "duplicated_5_n_grams"),
        ("，".join(["北京旅游", "北京旅游攻略", "北京旅游景点", "北京旅游路线"] * 8), "top_2_gram"),
        ("哈" * 300, "top_2_gram"),
    ],
    ids=["lines", "paragraph", "phrase", "ad padding", "page twice", "keywords", "one char"],
)
def test_chinese_repetition_is_still_dropped(text: str, reason: str) -> None:
    assert verdict("gopher_repetition", text)[0] == reason
