"""The IBAN length of every country, checked against SWIFT's IBAN registry as python-stdnum
ships it (``stdnum/iban.dat``, generated from the registry's text file): lmops's table was
typed by hand and had been checked by ten real IBANs only."""

from __future__ import annotations

import random
import re
from importlib import resources

import pytest
from stdnum import iban as stdnum_iban  # the dev extra (make test installs it)

from lmops.text._pii_checks import _IBAN_LENGTHS
from lmops.text.pii import detect_pii, iban_ok


def _registry() -> dict[str, str]:
    """Country code -> BBAN structure ("8!n10!n": 8 digits, then 10), from iban.dat."""
    text = (resources.files("stdnum") / "iban.dat").read_text(encoding="utf-8")
    return dict(re.findall(r'^([A-Z]{2}) .*?\bbban="([^"]+)"', text, re.M))


def _parts(bban: str) -> list[tuple[int, str]]:
    parts = [(int(n), kind) for n, kind in re.findall(r"([0-9]+)!([nac])", bban)]
    assert "".join(f"{n}!{k}" for n, k in parts) == bban, bban  # nothing else in it
    return parts


REGISTRY = _registry()


def test_the_registry_was_read() -> None:
    assert len(REGISTRY) >= 80 and REGISTRY["DE"] == "8!n10!n"


def test_every_country_and_length_is_the_registry_s() -> None:
    registry = {cc: 4 + sum(n for n, _ in _parts(bban)) for cc, bban in REGISTRY.items()}
    assert set(_IBAN_LENGTHS) == set(registry), (
        f"missing: {sorted(set(registry) - set(_IBAN_LENGTHS))}, "
        f"not in the registry: {sorted(set(_IBAN_LENGTHS) - set(registry))}"
    )
    wrong = {cc: (n, registry[cc]) for cc, n in _IBAN_LENGTHS.items() if registry[cc] != n}
    assert wrong == {}, "country: (lmops, registry)"


def _an_iban(country: str, rng: random.Random) -> str:
    """A made-up IBAN of ``country`` in its registry's BBAN structure, with check digits
    computed by python-stdnum (not by lmops)."""
    alphabet = {"n": "0123456789", "a": "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "c": "0123456789"}
    bban = "".join(
        "".join(rng.choice(alphabet[kind]) for _ in range(n))
        for n, kind in _parts(REGISTRY[country])
    )
    check = stdnum_iban.calc_check_digits(f"{country}00{bban}")
    return stdnum_iban.validate(f"{country}{check}{bban}", check_country=False)


@pytest.mark.parametrize("country", sorted(REGISTRY))
def test_an_iban_of_every_country_is_checked_and_found(country: str) -> None:
    rng = random.Random(country)
    iban = _an_iban(country, rng)
    assert iban_ok(iban), iban
    grouped = " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
    for spelled in (iban, grouped):
        text = f"Please wire it to {spelled} by Friday."
        assert [(s.type, s.text) for s in detect_pii(text)] == [("IBAN", spelled)], text
    # one character short or long, with check digits that fit it: not its country's IBAN
    for bban in (iban[4:-1], iban[4:] + "7"):
        other = f"{country}{stdnum_iban.calc_check_digits(f'{country}00{bban}')}{bban}"
        assert not iban_ok(other), other
