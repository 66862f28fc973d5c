"""PII kinds of US and international text: SSNs, NANP (US/Canada) phones, IBANs, and which
IP-like strings are not addresses. Literal English and Chinese sentences."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

import pytest

from lmops.data.document import Document
from lmops.data.ops import build_op
from lmops.security import GuardrailConfig, Guardrails
from lmops.text.pii import _DETECTORS, detect_pii, iban_ok, mask_pii, ssn_ok


def found(text: str, types: list[str] | None = None) -> list[tuple[str, str]]:
    return [(s.type, s.text) for s in detect_pii(text, types)]


TEMPLATES = ["Please reach me at {} after 5 pm.", "请拨打{}联系我们。"]


# ------------------------------------------------------------------------------ SSN
def test_ssn_rules_of_the_ssa() -> None:
    assert ssn_ok("123456789") and ssn_ok("078051120") and ssn_ok("899991234")
    for number in ("000123456", "666123456", "900123456", "987654321", "123004567", "123450000"):
        assert not ssn_ok(number), number


@pytest.mark.parametrize(
    ("text", "ssn"),
    [
        ("SSN 123-45-6789 on file.", "123-45-6789"),
        ("Her number is 078-05-1120, says the card.", "078-05-1120"),
        ("SSN: 123 45 6789", "123 45 6789"),
        ("ssn is 123456789.", "123456789"),
        ("Social Security Number: 219-09-9999", "219-09-9999"),
        ("social security no. 123 45 6789", "123 45 6789"),
        ("社会安全号码：123-45-6789。", "123-45-6789"),
        ("社会安全号 123456789，请保密。", "123456789"),
    ],
)
def test_ssn_writings(text: str, ssn: str) -> None:
    assert found(text) == [("SSN", ssn)]
    assert mask_pii(text)[0] == text.replace(ssn, "<SSN>")


@pytest.mark.parametrize(
    "text",
    [
        "SSN 666-12-3456",  # area 666 is never issued
        "SSN 900-12-3456",  # 9xx: an ITIN, not an SSN
        "SSN 000-12-3456",
        "SSN 123-00-4567",  # group 00
        "SSN 123-45-0000",  # serial 0000
        "part 123 45 6789 of the kit",  # spaced, no keyword: a list of numbers
        "order 123456789 shipped",  # plain, no keyword
        "ref 2024-123-45-6789",  # the middle of a longer dashed token
        "ref 123-45-6789-01",
        "ISBN 978-0-306-40615-7",
        "zip 94105-1234",
        "on 2024-05-13",
    ],
)
def test_not_ssns(text: str) -> None:
    assert found(text) == []


# ------------------------------------------------------------------------------ NANP phones
@pytest.mark.parametrize(
    "number",
    [
        "(415) 555-0100",
        "(415)555-0100",
        "(415) 555 0100",
        "(415) 555.0100",
        "415-555-0100",
        "415.555.0100",
        "415 555 0100",
        "1-415-555-0100",
        "1 415 555 0100",
        "1.415.555.0100",
        "1 (415) 555-0100",
        "+1 415 555 0100",
        "+1-415-555-0100",
        "+1 (415) 555-0100",
        "+14155550100",
        "(212) 736-5000",
        "604-555-0199",  # Vancouver: NANP is Canada too
    ],
)
def test_nanp_phone_writings(number: str) -> None:
    for template in TEMPLATES:
        text = template.format(number)
        assert found(text) == [("PHONE", number)], text
        assert mask_pii(text)[0] == template.format("<PHONE>")


@pytest.mark.parametrize(
    "text",
    [
        "call 911-555-0100",  # N11 is no area code
        "call 415-411-0100",  # nor an exchange
        "call 123-456-7890",  # area codes do not start with 0 or 1
        "call (015) 555-0100",
        "call 415-155-0100",  # exchanges neither
        "order 4155550100",  # ten digits in a row: as often an order number
        "order 415-555-01001",
        "order 415.555.0100.2",
        "ref 2024-415-555-0100",
        "call 415-555 0100",  # mixed separators
        "pi is 3.141.592.6535",
        "on 12/25/2024 at 10:15:00",
        "total 1,415,555.01",
    ],
)
def test_not_nanp_phones(text: str) -> None:
    assert found(text) == []


def test_nanp_beside_china_numbers() -> None:
    text = "US office (212) 736-5000, 北京办公室 010-12345678, 手机 13812345678."
    assert found(text) == [
        ("PHONE", "(212) 736-5000"),
        ("PHONE", "010-12345678"),
        ("PHONE", "13812345678"),
    ]


# ------------------------------------------------------------------------------ IBAN
IBANS = [
    "DE89370400440532013000",
    "GB82WEST12345698765432",
    "FR1420041010050500013M02606",
    "NL91ABNA0417164300",
    "CH9300762011623852957",
    "BE68539007547034",
    "ES9121000418450200051332",
    "IT60X0542811101000000123456",
    "NO9386011117947",
    "MT84MALT011000012345MTLCAST001S",
]


def grouped(iban: str) -> str:
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))


def test_iban_check() -> None:
    for iban in IBANS:
        assert iban_ok(iban), iban
    assert not iban_ok("DE89370400440532013001")  # one digit off: MOD 97 fails
    assert not iban_ok("DE8937040044053201300")  # a German IBAN has 22 characters
    assert not iban_ok("XX89370400440532013000")  # no such country


@pytest.mark.parametrize("iban", IBANS)
def test_iban_plain_and_grouped(iban: str) -> None:
    for spelled in (iban, grouped(iban)):
        for template in ("Wire it to IBAN {} today.", "收款账号：{}，户名张三。"):
            text = template.format(spelled)
            assert found(text) == [("IBAN", spelled)], text
            assert mask_pii(text)[0] == template.format("<IBAN>")


def test_an_iban_ends_where_its_country_says() -> None:
    # A grouped IBAN followed by a word of four capitals: the word is not part of it.
    assert found("BE68 5390 0754 7034 EURO account") == [("IBAN", "BE68 5390 0754 7034")]
    assert found("DE89370400440532013000 FROM") == [("IBAN", "DE89370400440532013000")]


@pytest.mark.parametrize(
    "text",
    [
        "IBAN DE00 3704 0044 0532 0130 00",  # wrong check digits
        "IBAN DE89 3704 0044 0532 0130 01",
        "IBAN DE89 3704 0044 0532 0130",  # too short for Germany
        "code XX89370400440532013000",  # no such country
        "SWIFT DEUTDEFF500",
        "model AB12CDEFGHIJKLMNOP",  # no account number in it
        "hash de89370400440532013000",  # lower case
        "id XDE89370400440532013000",  # glued to a letter
    ],
)
def test_not_ibans(text: str) -> None:
    assert found(text) == []


def test_an_iban_with_a_typo_is_no_landline_either() -> None:
    # The MOD 97 check fails, and "0729 3941 9358" inside the run of groups, shaped like a
    # China landline (area code 0729), is no phone number either.
    assert found("IBAN ES21 6934 6548 0729 3941 9358 for rent") == []
    assert found("IBAN DE86 0769 3968 8959 63;") == []
    assert found("座机 0729 3941 9358") == [("PHONE", "0729 3941 9358")]


def test_iban_wins_over_the_numbers_inside_it() -> None:
    # Its digits hold a Luhn-valid run and phone-like groups: the IBAN is one finding.
    text = "账号 DE89 3704 0044 0532 0130 00 已核对"
    assert found(text) == [("IBAN", "DE89 3704 0044 0532 0130 00")]
    assert found(text, ["PHONE", "BANK_CARD"]) == []


# ------------------------------------------------------------------------------ IP
@pytest.mark.parametrize(
    "text",
    [
        "listen on 0.0.0.0:8000",
        "curl http://127.0.0.1:8080/healthz",
        "ping 127.1.2.3",
        "bind [::1]:9000",
        "broadcast 255.255.255.255",
        "version 1.2.3.4",
        "Version: 10.0.0.1",
        "v 2.0.0.1",
        "版本号：1.2.3.4",
        "see section 3.2.1.4",
        "§ 4.1.2.1",
    ],
)
def test_ip_like_strings_that_are_no_ones_address(text: str) -> None:
    assert found(text) == []


def test_private_and_public_addresses_are_masked() -> None:
    text = "office 10.1.2.3, home 192.168.0.12, public 8.8.8.8 and 2a00:1450:4001:81b::200e"
    assert [t for t, _ in found(text)] == ["IP"] * 4


def test_an_ipv6_address_after_a_chinese_colon() -> None:
    # "：" reads as ":" in the normalised view; it used to glue itself to the address.
    assert found("服务器地址：2a00:1450:4001:81b::200e。") == [("IP", "2a00:1450:4001:81b::200e")]
    assert found("登记：fe80::1") == [("IP", "fe80::1")]
    assert found("info:2a00::1 and 时间：12:30:45") == []


# ------------------------------------------------------------------------------ selection
def test_the_new_kinds_are_selected_like_the_others() -> None:
    text = "SSN 123-45-6789, IBAN DE89 3704 0044 0532 0130 00, tel (415) 555-0100."
    assert mask_pii(text) == (
        "SSN <SSN>, IBAN <IBAN>, tel <PHONE>.",
        Counter({"SSN": 1, "IBAN": 1, "PHONE": 1}),
    )
    assert found(text, ["ssn"]) == [("SSN", "123-45-6789")]
    assert found(text, ["IBAN"]) == [("IBAN", "DE89 3704 0044 0532 0130 00")]

    op = build_op("pii_mask", types=["ssn", "iban"], placeholder_format="[{type}]")
    doc = Document(text=text, id="d1")
    op.apply(doc)
    assert doc.text == "SSN [SSN], IBAN [IBAN], tel (415) 555-0100."
    assert doc.metadata["pii"] == {"SSN": 1, "IBAN": 1}

    # The gateway masks them by default, and a deployment may leave one out.
    assert Guardrails().check_output(text).text == "SSN <SSN>, IBAN <IBAN>, tel <PHONE>."
    no_iban = GuardrailConfig(pii_types=["SSN", "PHONE"], classifier="off")
    assert Guardrails(no_iban).check_output(text).text == (
        "SSN <SSN>, IBAN DE89 3704 0044 0532 0130 00, tel <PHONE>."
    )


def test_streamed_replies_mask_the_new_kinds_split_anywhere() -> None:
    cfg = GuardrailConfig(classifier="off")
    for value in ("GB82 WEST 1234 5698 7654 32", "1 (415) 555-0100", "SSN 123 45 6789"):
        text = f"Your details: {value}. Thanks!"
        expected = Guardrails(cfg).check_output(text).text
        assert expected.count("<") == 1, expected
        for cut in range(1, len(text)):
            s = Guardrails(cfg).stream_guard()
            first, _ = s.feed(text[:cut])
            second, _ = s.feed(text[cut:])
            assert first + second + s.finish() == expected, (value, cut)


# ------------------------------------------------------------------------------ review fixes
@pytest.mark.parametrize(
    "text",
    [
        "--sizes 256 512 1024",
        "dims: 768 768 3072",
        "Table: 200 300 4000",
        "matrix 2 345 678 9012",
        "A = [256 512 1024];",  # MATLAB
        "phone 256 512 1024 2048",  # a keyword, but some groups of a longer spaced run
        "x 2 1 415 555 0100",
    ],
)
def test_spaced_groups_without_a_prefix_or_keyword_are_no_phone(text: str) -> None:
    """Any list of three spaced integers shaped 3-3-4 used to be masked as a phone, in every
    request the gateway checked and every document pii_mask read."""
    assert found(text) == []


@pytest.mark.parametrize(
    ("text", "phone"),
    [
        ("Tel: 415 555 0100", "415 555 0100"),
        ("call me at 415 555 0100.", "415 555 0100"),
        ('{"phone": "415 555 0100"}', "415 555 0100"),
        ("Fax 415 555 0100 2 lines", "415 555 0100"),
        ("电话：415 555 0100", "415 555 0100"),
        ("see 1 415 555 0100", "1 415 555 0100"),
        ("1 415 555 0100 x 5 ", "1 415 555 0100"),  # at the start: nothing before it
        ("see (415) 555 0100", "(415) 555 0100"),
        ("sizes 256-512-1024", "256-512-1024"),  # dashed and dotted stay phones
        ("sizes 256.512.1024", "256.512.1024"),
    ],
)
def test_spaced_phones_with_a_prefix_or_after_a_keyword(text: str, phone: str) -> None:
    assert found(text) == [("PHONE", phone)]


@pytest.mark.parametrize(
    ("text", "phone"),
    [
        ("电话：010-12345678 9:00-18:00", "010-12345678"),
        ("营业时间 9:00-18:00 010-6552 1234", "010-6552 1234"),
        ("No. 3 021-87654321", "021-87654321"),
        ("call 021-8765-4321 2次", "021-8765-4321"),
        ("电话 0755-8888-9999 1号线", "0755-8888-9999"),
        ("Tel: 010 1234 5678 2 lines", "010 1234 5678"),
    ],
)
def test_china_landlines_beside_a_digit_and_a_space(text: str, phone: str) -> None:
    """Skipping a typo'd IBAN's groups refused any landline with '<digit> ' beside it."""
    assert found(text) == [("PHONE", phone)]


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ('{"ssn": "123456789"}', "123456789"),
        ('{"ssn": "123 45 6789"}', "123 45 6789"),
        ("ssn='123-45-6789'", "123-45-6789"),
        ("SSN = 123456789", "123456789"),
        ("SSN No. 123456789", "123456789"),
        ("SSN number: 123456789", "123456789"),
        ("SSN-123-45-6789", "123-45-6789"),
        ('{"passport_no": "X1234567"}', "X1234567"),
    ],
)
def test_keyword_numbers_in_json_and_config_form(text: str, number: str) -> None:
    assert [t for _, t in found(text)] == [number]


@pytest.mark.parametrize(
    "text",
    [
        "SKU-123-45-6789",
        "INV-415-555-0100",
        "ref ABC-212-555-1234",
        "123-45-6789-A",
        "INV-415.555.0100",
        "415-555-0100-B2",
    ],
)
def test_codes_ending_in_an_ssn_or_phone_shape(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize("text", ["x[1::2]", "b[10::3]", "s[2::]", "Time 10:30::45", "a[100::200]"])
def test_python_slices_are_no_ipv6_addresses(text: str) -> None:
    assert found(text, ["IP"]) == []


def test_decimal_only_ipv6_addresses_stay_addresses() -> None:
    assert found("dns [2001:4860:4860::8888]:53, gw 2001::1") == [
        ("IP", "2001:4860:4860::8888"),
        ("IP", "2001::1"),
    ]


# A long blank run after a keyword: two unbounded blank runs around an optional separator
# made these quadratic ("SSN" + 100k spaces + "x 1234567" took 53 s).
LONG_BLANKS = [
    "SSN{} x 1234567",
    "social security{}no{} x 1234567",
    "passport{} x 1234567",
    "Passport no{}x 1234567",
    "护照{}x 1234567",
    "aws_secret_key{}x",
    "Bearer{}x",
    "Tel:{}415 555 0100 1234567",
]


def test_keyword_detectors_stay_linear_on_long_blank_runs() -> None:
    script = (
        "import sys; from lmops.text.pii import detect_pii\n"
        f"for t in {LONG_BLANKS!r}: detect_pii(t.replace('{{}}', ' ' * 100_000))\n"
    )
    # A liveness bound, not a timing: each takes milliseconds; quadratic, minutes.
    subprocess.run([sys.executable, "-c", script], check=True, timeout=20)


def test_no_detector_has_an_unbounded_blank_run() -> None:
    unbounded = re.compile(r"(?:\\s|\[[ \\t_]+\]| )(?:[*+]|\{[0-9]*,\})")
    for det in _DETECTORS:
        assert unbounded.search(det.pattern.pattern) is None, det.pattern.pattern
