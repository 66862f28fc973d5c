"""PII detection and masking on literal Chinese and English documents."""

from __future__ import annotations

import itertools
import random
import unicodedata
from collections import Counter

import pytest

from lmops.core.errors import UserError
from lmops.data.document import Document
from lmops.data.ops import build_op
from lmops.text.pii import (
    PII_TYPES,
    PiiSpan,
    detect_pii,
    find_emails,
    id18_checksum_ok,
    luhn_ok,
    mask_pii,
)


def found(text: str, types: list[str] | None = None) -> list[tuple[str, str]]:
    return [(s.type, s.text) for s in detect_pii(text, types)]


# ------------------------------------------------------------------------------ phones
@pytest.mark.parametrize(
    "number",
    [
        "13812345678",
        "+86 138 1234 5678",
        "+86-138-1234-5678",
        "0086 13812345678",
        "138-1234-5678",
        "138 1234 5678",
        "(+86)13812345678",
        "+8613812345678",
        "8613812345678",
        "19912345678",
    ],
)
def test_cn_mobile_spellings(number: str) -> None:
    text = f"请拨打{number}联系张先生。"
    assert found(text) == [("PHONE", number)]
    assert mask_pii(text)[0] == "请拨打<PHONE>联系张先生。"


@pytest.mark.parametrize(
    "number", ["010-12345678", "0755-1234567", "(021) 12345678", "021-1234 5678"]
)
def test_cn_landlines(number: str) -> None:
    assert found(f"办公室电话：{number}，工作日可拨打。") == [("PHONE", number)]


@pytest.mark.parametrize(
    "number", ["+44 20 7946 0958", "+1 415-555-2671", "+1 (415) 555-2671", "+44 (0)20 7946 0958"]
)
def test_international_e164(number: str) -> None:
    text = f"Call our office on {number} before 5 pm."
    assert found(text) == [("PHONE", number)]
    assert mask_pii(text)[0] == "Call our office on <PHONE> before 5 pm."


def test_full_width_digits_are_read_as_ascii() -> None:
    text = "手机：１３８１２３４５６７８"
    assert found(text) == [("PHONE", "１３８１２３４５６７８")]
    assert mask_pii(text)[0] == "手机：<PHONE>"


@pytest.mark.parametrize(
    "text",
    [
        "订单号13812345678901已发货",  # 14 digits: an order number, not a phone
        "订单号138123456789012已发货",  # 15 digits
        "流水号2024-13812345678",  # glued to a longer dash-joined token
        "SKU13812345678",  # glued to ASCII letters
        "id_13812345678",  # glued to "_"
        "12812345678",  # 12x is no mobile prefix
        "1381234567",  # one digit short
        "temperature +1 23",  # too few digits for E.164
        "电话01012345678",  # landline without a separator: too ambiguous
    ],
)
def test_not_phones(text: str) -> None:
    assert found(text) == []


# ------------------------------------------------------------------------------ ID cards
def test_id18_checksum_function() -> None:
    assert id18_checksum_ok("11010519491231002X")
    assert id18_checksum_ok("11010519491231002x")
    assert not id18_checksum_ok("110105194912310021")
    assert id18_checksum_ok("310115198512310029")


@pytest.mark.parametrize(
    "number",
    ["11010519491231002X", "44030519900101123X", "310115198512310029", "110105200002291016"],
)
def test_id18_valid(number: str) -> None:
    text = f"身份证号：{number}，请核对。"
    assert found(text) == [("ID_CARD", number)]
    assert mask_pii(text)[0] == "身份证号：<ID_CARD>，请核对。"


def test_id18_written_in_groups() -> None:
    assert found("证件 110105 19491231 002X 已登记") == [("ID_CARD", "110105 19491231 002X")]


@pytest.mark.parametrize(
    "text",
    [
        "身份证号110105194912310021",  # check character should be X
        "身份证号310115198512310028",  # check character should be 9
        "身份证号110105194902301014",  # 1949-02-30 does not exist
        "身份证号990105194912310024",  # 99 is no province
        "身份证号110105289912310012",  # born in 2899
        "编号11010519491231002X9",  # part of a longer run
    ],
)
def test_id18_invalid_is_not_pii(text: str) -> None:
    assert found(text) == []


def test_id15_legacy() -> None:
    assert found("老身份证110105491231002还能用吗") == [("ID_CARD", "110105491231002")]
    assert found("老身份证110105491331002") == []  # month 13


def test_id_card_beats_bank_card() -> None:
    # This 18-digit ID number also passes Luhn: the ID card interpretation wins.
    assert luhn_ok("440305199001010149")
    assert found("身份证440305199001010149") == [("ID_CARD", "440305199001010149")]


# ------------------------------------------------------------------------------ bank cards
def test_luhn_function() -> None:
    assert luhn_ok("4111111111111111")
    assert luhn_ok("378282246310005")
    assert not luhn_ok("4111111111111112")


@pytest.mark.parametrize(
    "number",
    [
        "6222021234567890128",
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5500 0000 0000 0004",
        "3782 822463 10005",
        "6222 0212 3456 7890 128",
    ],
)
def test_bank_cards(number: str) -> None:
    text = f"退款将打入卡号{number}，请查收。"
    assert found(text) == [("BANK_CARD", number)]
    assert mask_pii(text)[0] == "退款将打入卡号<BANK_CARD>，请查收。"


def test_grouped_card_followed_by_a_short_group() -> None:
    assert found("card 4111 1111 1111 1111 2024") == [("BANK_CARD", "4111 1111 1111 1111")]


@pytest.mark.parametrize(
    "text",
    [
        "卡号4111111111111112",  # fails Luhn
        "卡号6222021234567890127",  # fails Luhn
        "timestamp 1700000000000",  # 13 digits starting with 1: not a card prefix
        "卡号41111111111111110000",  # 22 digits: too long
        "4111 1111 1111 1111 1111 1111",  # a longer grouped run
        # Luhn-valid, but 13 digits are a Visa-only length: barcodes and ISBNs stay.
        "商品条码6901234560046",  # EAN-13 of Chinese goods
        "ISBN 9787111540038",
    ],
)
def test_not_bank_cards(text: str) -> None:
    assert found(text) == []


def test_thirteen_digit_visa_is_a_card() -> None:
    assert luhn_ok("6901234560046") and luhn_ok("9787111540038")
    assert found("old visa 4222222222222") == [("BANK_CARD", "4222222222222")]


# ------------------------------------------------------------------------------ e-mail
def test_emails_english_and_chinese() -> None:
    text = "Write to zhang.san+news@mail.example.com.cn or 邮箱lisi@163.com。"
    assert found(text) == [
        ("EMAIL", "zhang.san+news@mail.example.com.cn"),
        ("EMAIL", "lisi@163.com"),
    ]
    assert mask_pii(text) == ("Write to <EMAIL> or 邮箱<EMAIL>。", Counter({"EMAIL": 2}))


def test_phone_inside_email_is_an_email() -> None:
    text = "联系13812345678@qq.com"
    assert found(text) == [("EMAIL", "13812345678@qq.com")]
    # Asking only for phones does not find the phone inside the address either.
    assert found(text, ["PHONE"]) == []


def test_not_emails() -> None:
    assert found("user@localhost and @handle and a@b") == []
    assert find_emails("x" * 100 + "@example.com") == []  # a local part over 64 chars


# ------------------------------------------------------------------------------ IP
def test_ip_addresses() -> None:
    text = "服务器192.168.1.10, gateway 10.0.0.1. v6: fe80::1 and 2001:db8::8a2e:370:7334, ::ffff:192.0.2.1"
    assert found(text) == [
        ("IP", "192.168.1.10"),
        ("IP", "10.0.0.1"),
        ("IP", "fe80::1"),
        ("IP", "2001:db8::8a2e:370:7334"),
        ("IP", "::ffff:192.0.2.1"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "256.1.1.1",
        "1.2.3.4.5",
        "version v1.2.3.4",
        "01.02.03.04",
        "std::vector<int>",
        "at 12:30:45 today",
        "mac 00:1A:2B:3C:4D:5E",
        "a::b",
    ],
)
def test_not_ip_addresses(text: str) -> None:
    assert found(text) == []


# ------------------------------------------------------------------------------ passports
def test_passports() -> None:
    text = "护照号码：E12345678；旧护照G12345678；新号段EA1234567；Passport No. X1234567"
    assert found(text) == [
        ("PASSPORT", "E12345678"),
        ("PASSPORT", "G12345678"),
        ("PASSPORT", "EA1234567"),
        ("PASSPORT", "X1234567"),
    ]
    assert mask_pii("passport number: 123456789 issued")[0] == "passport number: <PASSPORT> issued"


@pytest.mark.parametrize(
    "text",
    [
        "Passport holders must apply online",
        "E1234567 is one digit short",
        "EI1234567 uses the letter I",
        "XE12345678 is glued to a letter",
    ],
)
def test_not_passports(text: str) -> None:
    assert found(text) == []


# ------------------------------------------------------------------------------ secrets
@pytest.mark.parametrize(
    "secret",
    [
        "AKIAIOSFODNN7EXAMPLE",
        "LTAI5tQ6NwRk8qPzX3vY2aBc",
        "ghp_1234567890abcdefghijklmnopqrstuvwxyz",
        "sk-proj-abcdefghijklmnop1234567890",
        "sk-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijkl",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ],
)
def test_secret_tokens(secret: str) -> None:
    text = f"config: key={secret} # do not share"
    assert found(text) == [("SECRET", secret)]
    assert mask_pii(text)[0] == "config: key=<SECRET> # do not share"


def test_bearer_token_keeps_the_scheme() -> None:
    text = "Authorization: Bearer abcdef1234567890ghijkl\nAccept: */*"
    assert mask_pii(text)[0] == "Authorization: Bearer <SECRET>\nAccept: */*"


def test_private_key_block() -> None:
    text = (
        "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq\n+Zx9/abc==\n"
        "-----END RSA PRIVATE KEY-----\nthanks"
    )
    assert mask_pii(text) == ("key:\n<SECRET>\nthanks", Counter({"SECRET": 1}))


def test_truncated_private_key_block() -> None:
    text = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nQyNTUxOQAAACD\n\nbye"
    assert mask_pii(text)[0] == "<SECRET>\n\nbye"


@pytest.mark.parametrize(
    "text",
    [
        "use sk-learn-compatible-estimators here",
        "Bearer tokens are described in RFC 6750",
        "the AKIA prefix marks access keys",
        "ghp_short",
    ],
)
def test_not_secrets(text: str) -> None:
    assert found(text) == []


# ------------------------------------------------------------------------------ whole documents
ZH_DOC = (
    "客户信息：张三，身份证号11010519491231002X，手机+86 138 1234 5678，"
    "座机010-12345678，邮箱zhangsan@example.com，银行卡6222 0212 3456 7890 128，"
    "登录IP 192.168.1.10。订单号13812345678901，金额1299.00元。"
)


def test_chinese_document_mask_and_counts() -> None:
    masked, counts = mask_pii(ZH_DOC)
    assert masked == (
        "客户信息：张三，身份证号<ID_CARD>，手机<PHONE>，"
        "座机<PHONE>，邮箱<EMAIL>，银行卡<BANK_CARD>，"
        "登录IP <IP>。订单号13812345678901，金额1299.00元。"
    )
    assert counts == Counter({"PHONE": 2, "ID_CARD": 1, "EMAIL": 1, "BANK_CARD": 1, "IP": 1})


def test_spans_are_sorted_non_overlapping_and_exact() -> None:
    spans = detect_pii(ZH_DOC)
    assert [s.start for s in spans] == sorted(s.start for s in spans)
    for a, b in itertools.pairwise(spans):
        assert a.end <= b.start
    for s in spans:
        assert ZH_DOC[s.start : s.end] == s.text
    assert spans[0] == PiiSpan("ID_CARD", 12, 30, "11010519491231002X")


def test_types_filter_and_placeholder() -> None:
    masked, counts = mask_pii(ZH_DOC, types=["email", "ip"], placeholder="[{type}]")
    assert "[EMAIL]" in masked and "[IP]" in masked
    assert "+86 138 1234 5678" in masked
    assert counts == Counter({"EMAIL": 1, "IP": 1})


def test_unknown_type_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown PII type 'creditcard'"):
        detect_pii("x", ["creditcard"])
    # The validated lists are cached; a bad one fails every time, a changed one is re-read.
    with pytest.raises(UserError, match="unknown PII type 'creditcard'"):
        detect_pii("x", ["creditcard"])
    types = ["phone"]
    assert found("13812345678 a@b.com", types) == [("PHONE", "13812345678")]
    types.append("email")
    assert found("13812345678 a@b.com", types) == [("PHONE", "13812345678"), ("EMAIL", "a@b.com")]
    assert detect_pii("13812345678", []) == []


# ------------------------------------------------------------------------------ shortcuts
# detect_pii skips what cannot report: types ranked below every wanted one, the number
# detectors in text without seven digits in a row (single spaces or dashes between them
# allowed), the keyword gates on the lower-cased text. These pin the edges of each.
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call +1.2.3.4.5.6.7.8.9 now", ("PHONE", "+1.2.3.4.5.6.7.8.9")),  # no 2 digits in a row
        ("passport no. A1B2C3D4", ("PASSPORT", "A1B2C3D4")),  # digits never adjacent
        ("PASSPORT NUMBER: X1234567", ("PASSPORT", "X1234567")),
        ("Authorization: BEARER abcdef1234567890ghijkl", ("SECRET", "abcdef1234567890ghijkl")),
        (
            "AWS_SECRET_ACCESS_KEY = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            ("SECRET", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        ),
        ("电话 (0755)8888 1234", ("PHONE", "(0755)8888 1234")),  # 7 digits after ")"
        ("138 1234 5678", ("PHONE", "138 1234 5678")),
        ("3782 822463 10005", ("BANK_CARD", "3782 822463 10005")),
        ("证件 110105 19491231 002X", ("ID_CARD", "110105 19491231 002X")),
        ("护照号EA1234567", ("PASSPORT", "EA1234567")),  # 7 digits after two letters
        ("ｐａｓｓｐｏｒｔ ｎｏ． Ａ１Ｂ２Ｃ３Ｄ４", ("PASSPORT", "Ａ１Ｂ２Ｃ３Ｄ４")),
        # no digit at all
        ("key AKIAIOSFODNNAEXAMPLE", ("SECRET", "AKIAIOSFODNNAEXAMPLE")),
        (
            "AWS_Secret_Key: wJalrXUtnFEMIKMDENGbPxRfiCYEXAMPLEKEYabc",
            ("SECRET", "wJalrXUtnFEMIKMDENGbPxRfiCYEXAMPLEKEYabc"),
        ),
        (
            "token ghp_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ end",
            ("SECRET", "ghp_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"),
        ),
        ("slack xoxb-abcdefghijklmn ok", ("SECRET", "xoxb-abcdefghijklmn")),
        ("mail Zhang.San@Example.COM", ("EMAIL", "Zhang.San@Example.COM")),
        (
            "邮箱：ｚｈａｎｇ＠ｅｘａｍｐｌｅ．ｃｏｍ",
            ("EMAIL", "ｚｈａｎｇ＠ｅｘａｍｐｌｅ．ｃｏｍ"),
        ),
        (
            "-----BEGIN PRIVATE KEY-----\nabcDEF+/=",
            ("SECRET", "-----BEGIN PRIVATE KEY-----\nabcDEF+/="),
        ),
    ],
)
def test_findings_at_the_edges_of_the_shortcuts(text: str, expected: tuple[str, str]) -> None:
    assert found(text, None) == [expected]


def test_prose_without_pii_finds_nothing() -> None:
    for text in [
        "Asia, aws and a bearer of news, 1.5 passports",  # gate words, no numbers
        "v1.2 in 2024: tok1 tok2 tok3",  # digits, none seven in a row
        "The quick brown fox jumps over the lazy dog. " * 20,
        "请帮我写一份关于北京旅游的攻略，包括故宫、长城和颐和园。",
    ]:
        assert detect_pii(text, None) == []


def test_type_selection_only_filters_the_findings() -> None:
    # Overlaps are resolved among all types first, so selecting types (which lets
    # detect_pii skip the types ranked below them) must give a subset of the full result.
    pieces = [
        "+1 2 3 4 5 6 7 8 9",
        "passport no. A1B2C3D4",
        "server 1.2.3.4 and fe80::1",
        "2001:db8::8a2e:370:7334",
        "13812345678@qq.com",
        "138 1234 5678",
        "4111 1111 1111 1111",
        "11010519491231002X",
        "192.168.1.10",
        "sk-proj-abcdefghijklmnop1234567890",
        "E12345678",
        "，",
        " ",
        "x",
    ]
    rnd = random.Random(0)
    selections = [[t] for t in PII_TYPES] + [["PHONE", "IP"], ["EMAIL", "BANK_CARD"], ["IP"]]
    for _ in range(60):
        text = "".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 8)))
        every = detect_pii(text)
        for types in selections:
            assert detect_pii(text, types) == [s for s in every if s.type in types], (text, types)


def test_every_type_has_a_default_placeholder() -> None:
    assert PII_TYPES == (
        "SECRET",
        "EMAIL",
        "ID_CARD",
        "IBAN",
        "SSN",
        "PASSPORT",
        "PHONE",
        "BANK_CARD",
        "IP",
    )


# ------------------------------------------------------------------------------ obfuscated
# Detection runs on a normalised view (digits of every script, no invisible characters,
# spelled-out e-mails, joined digit groups) and masks the original span whole.
ZW = "\u200b"
OBFUSCATED = [
    # phones: dots, slashes, NBSP, spaced digits, zero-width, full-width, other scripts
    ("PHONE", "138.1234.5678"),
    ("PHONE", "138/1234/5678"),
    ("PHONE", "138 - 1234 - 5678"),
    ("PHONE", "138.1234-5678"),
    ("PHONE", "138\u00a01234\u00a05678"),
    ("PHONE", "138\u202f1234\u202f5678"),
    ("PHONE", "1 3 8 1 2 3 4 5 6 7 8"),
    ("PHONE", "1.3.8.1.2.3.4.5.6.7.8"),
    ("PHONE", ZW.join("13812345678")),
    ("PHONE", "138\u200d1234\u20605678"),
    ("PHONE", "１３８１２３４５６７８"),
    ("PHONE", "\u0661\u0663\u0668\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668"),  # Arabic-Indic
    ("PHONE", "\u0967\u0969\u096e\u0967\u0968\u0969\u096a\u096b\u096c\u096d\u096e"),  # Devanagari
    ("PHONE", "１３８.１２３４.５６７８"),
    ("PHONE", "+86.138.1234.5678"),
    ("PHONE", "1\ufe0f\u20e33\ufe0f\u20e38\ufe0f\u20e312345678"),  # keycaps
    # cards: dots, zero-width, spaced digits, NBSP, slashes
    ("BANK_CARD", "4111.1111.1111.1111"),
    ("BANK_CARD", "4111/1111/1111/1111"),
    ("BANK_CARD", "4111\u200b1111\u200b1111\u200b1111"),
    ("BANK_CARD", " ".join("4111111111111111")),
    ("BANK_CARD", "6222\u00a00212\u00a03456\u00a07890\u00a0128"),
    ("BANK_CARD", "6222.0212.3456.7890.128"),
    ("BANK_CARD", "４１１１ １１１１ １１１１ １１１１"),
    # ID numbers: zero-width, spaced, dots, NBSP, other scripts
    ("ID_CARD", "110105\u200b19491231\u200b002X"),
    ("ID_CARD", ZW.join("11010519491231002X")),
    ("ID_CARD", " ".join("11010519491231002X")),
    ("ID_CARD", "110105.19491231.002X"),
    ("ID_CARD", "110105\u00a019491231\u00a0002x"),
    (
        "ID_CARD",
        "\u0661\u0661\u0660\u0661\u0660\u0665\u0661\u0669\u0664\u0669\u0661\u0662\u0663\u0661\u0660\u0660\u0662X",
    ),
    # e-mails: at/dot, [at], (at), full-width, spaces around "@", zero-width
    ("EMAIL", "zhang.san at example dot com"),
    ("EMAIL", "zhang.san AT example DOT com"),
    ("EMAIL", "zhang.san[at]example.com"),
    ("EMAIL", "zhang.san[at]example[dot]com"),
    ("EMAIL", "zhang.san (at) mail (dot) example (dot) cn"),
    ("EMAIL", "zhang.san{at}example.com"),
    ("EMAIL", "zhang.san＠example.com"),
    ("EMAIL", "zhang.san ＠ example．com"),
    ("EMAIL", "zhang.san @ example.com"),
    ("EMAIL", "zhang.san @example.com"),
    ("EMAIL", "zhang.san@ example.com"),
    ("EMAIL", "zhang\u200b.san@exa\u200bmple.com"),
    ("EMAIL", "zhang.san@example dot com"),
    # ... and the local part's dots spelled out too (its first word was left in clear)
    ("EMAIL", "zhang dot san at example dot com"),
    ("EMAIL", "zhang [dot] san [at] example [dot] com"),
    ("EMAIL", "li dot xiao dot ming (at) qq (dot) com"),
    # passports: lower case, spaced, dashes
    ("PASSPORT", "e12345678"),
    ("PASSPORT", "g12345678"),
    ("PASSPORT", "ea1234567"),
    ("PASSPORT", "E 1234 5678"),
    ("PASSPORT", "E-1234-5678"),
    ("PASSPORT", "e 1 2 3 4 5 6 7 8"),
    ("PASSPORT", "EA 123 4567"),
    ("PASSPORT", "E1234\u200b5678"),
]


@pytest.mark.parametrize(("typ", "spelled"), OBFUSCATED)
def test_obfuscated_spellings_are_masked_whole(typ: str, spelled: str) -> None:
    for template in ("请联系{}，谢谢。", "Details: {} (verified)."):
        text = template.format(spelled)
        spans = detect_pii(text)
        assert [(s.type, s.text) for s in spans] == [(typ, spelled)], text
        assert spans[0].start == text.index(spelled)
        assert mask_pii(text)[0] == template.format(f"<{typ}>")


def test_a_joined_number_is_not_glued_to_a_letter_after_it() -> None:
    # Only an ID number (17 digits) takes a separate "X" as its check character.
    assert found("tel 138.1234.5678 x") == [("PHONE", "138.1234.5678")]
    spaced = " ".join("11010519491231002X")
    assert found(f"ID {spaced} ok") == [("ID_CARD", spaced)]


def test_invisible_characters_next_to_a_finding_go_with_it() -> None:
    # A dropped character belongs to the one before it: a trailing keycap is masked too,
    # a zero-width space before the number is not.
    text = "\u200b1\ufe0f\u20e33\ufe0f\u20e38\ufe0f\u20e312345678\ufe0f\u20e3!"
    assert mask_pii(text)[0] == "\u200b<PHONE>!"


def test_several_obfuscated_findings_in_one_text() -> None:
    text = "电话138.1234.5678，卡号4111\u200b1111\u200b1111\u200b1111，邮箱 li [at] qq [dot] com。"
    assert mask_pii(text) == (
        "电话<PHONE>，卡号<BANK_CARD>，邮箱 <EMAIL>。",
        Counter({"PHONE": 1, "BANK_CARD": 1, "EMAIL": 1}),
    )
    assert find_emails(text) == [(text.index("li"), text.index("com") + 3)]


# Gateway default: every type but IP.
NOT_IP = [t for t in PII_TYPES if t != "IP"]


@pytest.mark.parametrize(
    "text",
    [
        "card " + ".".join(["4111", "1111", "1111", "1112"]),  # fails Luhn
        "card " + " ".join("4111111111111112"),
        "ID " + ZW.join("110105194912310021"),  # check character should be X
        "ID " + " ".join("110105194912310021"),
        "tel 128.1234.5678",  # 12x is no mobile prefix
        "tel 138.1234.56789",  # 12 digits
        "version 1.2.3.4567",
        "build 10.0.19045.3693",
        "server 139.123.145.67 is up",  # an IPv4 address, IP not selected: not a phone
        "listen on 139.123.145.67:8080",
        "13.812.345.678 euros",  # thousands separators
        "¥13,812,345.67",
        "Python prints 0.4111111111111111",  # decimals, not a Visa number
        "on 2024.05.13 at 13:45:12",
        "on 2024/05/13",
        "order 2024-0513-88123",
        "ts 1715600000123",
        "odd numbers 1 3 5 7 9 11 13 15",
        "commit e3b0c44298fc1c149afbf4c8996fb924",
        "code E1234567 is short",
        "look at this dot product",
        "visit us at example.com",
        "ping me @ noon",
        "thanks @user42 for the fix",
        "the station at the top dot",
    ],
)
def test_obfuscation_lookalikes_are_not_pii(text: str) -> None:
    assert detect_pii(text, NOT_IP) == []


def test_a_grouped_card_is_not_read_as_a_landline_inside_it() -> None:
    # "0324 2562 2698" looks like a landline (area code 0324): inside a Luhn-valid grouped
    # card number it is some of the card's groups.
    assert found("卡号6266 0324 2562 2698 639") == [("BANK_CARD", "6266 0324 2562 2698 639")]
    assert found("座机0324 2562 2698") == [("PHONE", "0324 2562 2698")]


def test_normalisation_tables_are_what_they_say() -> None:
    from lmops.text import _pii_view as pii  # the normalised views and their tables

    for zero in (*pii._DIGIT_ZEROS_BMP, *pii._DIGIT_ZEROS_ASTRAL):
        assert [unicodedata.decimal(chr(zero + d)) for d in range(10)] == list(range(10))
    extras = {0x034F, 0x20E3, *range(0xFE00, 0xFE10)}  # combining, not format characters
    for cp in pii._INVISIBLE:
        assert cp in extras or unicodedata.category(chr(cp)) == "Cf", hex(cp)
    for cp in pii._SPACE_CPS:
        assert unicodedata.category(chr(cp)) == "Zs"


# ------------------------------------------------------------------------------ big inputs
# How long these take is measured by benchmarks/guard_bench.py (--parts pii): tests do not
# depend on the clock. Here: the answers on a long document and on adversarial inputs.
def test_one_kilobyte_document() -> None:
    doc = (
        "The quick brown fox jumps over the lazy dog. Version 3.11.2 shipped on 2024-05-01. "
        "Contact help@example.org or +1 415-555-2671. 我们的客服电话是13812345678，欢迎咨询。"
    ) * 6
    doc = doc[:1000]
    assert Counter(s.type for s in detect_pii(doc)) == Counter({"EMAIL": 6, "PHONE": 12})


@pytest.mark.parametrize(
    "text",
    [
        "1" * 50_000,
        "1 2-" * 12_500,
        "a" * 50_000 + "@",
        "1:" * 25_000,
        "1." * 25_000,
        "+1 " * 15_000,
        "-----BEGIN PRIVATE KEY-----\n" + "A" * 50_000,
        "1 " * 25_000,
        "1/" * 25_000,
        "a at b dot " * 5_000,
        "\u200b" * 50_000,
        "1\u200b" * 25_000,
        "\u0661" * 50_000,
        "a." * 25_000 + "@x.com",
        "AB12 " * 10_000 + "1234567",
        "(415) " * 8_000 + "1234567",
        "123-45-" * 7_000,
        "415." * 12_000,
        "SSN " * 12_000 + "1234567",
    ],
)
def test_adversarial_inputs_find_nothing(text: str) -> None:
    assert detect_pii(text, [t for t in PII_TYPES if t != "SECRET"]) == []


# ------------------------------------------------------------------------------ operator
def test_pii_mask_operator_counts_into_metadata() -> None:
    op = build_op("pii_mask")
    doc = Document(text="电话13812345678，备用13912345678，邮件a@example.com", id="d1")
    op.apply(doc)
    assert doc.text == "电话<PHONE>，备用<PHONE>，邮件<EMAIL>"
    assert doc.metadata["pii"] == {"PHONE": 2, "EMAIL": 1}
    # Running again on new PII adds to the counts.
    doc.text += " IP 10.0.0.1"
    op.apply(doc)
    assert doc.metadata["pii"] == {"PHONE": 2, "EMAIL": 1, "IP": 1}


def test_pii_mask_operator_params() -> None:
    op = build_op("pii_mask", types=["phone"], placeholder_format="[{type}]")
    doc = Document(text="Call +1 415-555-2671 or mail bob@example.com", id="d2")
    op.apply(doc)
    assert doc.text == "Call [PHONE] or mail bob@example.com"
    assert doc.metadata == {"pii": {"PHONE": 1}}


def test_pii_mask_operator_leaves_clean_documents_alone() -> None:
    doc = Document(text="今天天气很好，我们去公园散步。", id="d3")
    build_op("pii_mask").apply(doc)
    assert doc.text == "今天天气很好，我们去公园散步。"
    assert "pii" not in doc.metadata


def test_pii_mask_operator_rejects_bad_params() -> None:
    with pytest.raises(UserError, match=r"parameter 'types'.*unknown PII type 'nope'"):
        build_op("pii_mask", types=["nope"])
    with pytest.raises(UserError, match="parameter 'placeholder_format'"):
        build_op("pii_mask", placeholder_format="<{kind}>")


def test_pii_mask_counts_reach_the_operator_counters() -> None:
    from lmops.data.document import Document
    from lmops.data.ops import build_op

    op = build_op("pii_mask")
    docs = [Document("邮箱 a@b.com，电话 13812345678", "1"), Document("mail c@d.org", "2")]
    list(op(docs))
    assert op.counters == {"EMAIL": 2, "PHONE": 1}


def test_spelled_addresses_side_by_side_are_each_masked_whole() -> None:
    # a local part's spelled dots never reach back into the address before it
    cases = {
        "x at gmail dot com dot y at gmail dot com": "<EMAIL> dot <EMAIL>",
        "alice at gmail dot com. dot bob at yahoo dot com": "<EMAIL>. dot <EMAIL>",
        "a at b dot com and john dot doe at example dot com": "<EMAIL> and <EMAIL>",
    }
    for text, masked in cases.items():
        assert mask_pii(text)[0] == masked, text
