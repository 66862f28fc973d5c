"""Whose signature counts: a package is served and unpacked only when its signer is a
trusted key (``--pubkey`` / ``public_key:``, or ``$LMOPS_HOME/trusted-keys/*.pub``, which
``lmops deploy keygen`` fills with its own key and ``lmops deploy trust`` with others').

Anyone can make a key, so a valid signature by a key nobody trusts proves nothing: it used
to be served (``lmops serve --model chat=evil --key-file prod.key``) and verified OK while an
unsigned package was refused. ``lmops deploy verify`` still checks such a package but says
loudly that the signer is not trusted, and exits 3. ``lmops serve`` checks the signer (and
the KEK) of every package before it says it is serving, from the header alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.core.sealed import (
    Package,
    generate_keys,
    load_kek,
    load_signing_key,
    trust_store,
    write_package,
)
from lmops.serve import startup


def _sealed(folder: Path, out: Path, signer: Path, kek_file: Path) -> Path:
    write_package(folder, out, signing_key=load_signing_key(signer), kek=load_kek(kek_file))
    return out


def test_a_package_signed_by_any_key_is_not_trusted(
    cli: Any, lmops_home: Path, folder: Path, tmp_path: Path
) -> None:
    prod = tmp_path / "prod.key"
    r = cli("deploy", "keygen", "--output", str(prod), "--json")
    assert r.code == 0, r.err
    trusted = json.loads(r.out)["trusted"]
    assert Path(trusted).parent == trust_store(lmops_home)  # keygen trusts its own key
    assert "signing_key" not in Path(trusted).read_text()  # only the public half

    other = generate_keys(tmp_path / "other.key").path  # anyone's key
    evil = _sealed(folder, tmp_path / "evil.lmpkg", other, prod)
    good = _sealed(folder, tmp_path / "good.lmpkg", prod, prod)

    r = cli("deploy", "verify", str(evil), "--key-file", str(prod))
    assert r.code == 3, (r.out, r.err)
    assert r.out.startswith("UNTRUSTED ")
    assert "NOT checked against a trusted key" in r.err and "lmops deploy trust" in r.err
    r = cli("deploy", "verify", str(evil), "--json")
    assert r.code == 3 and json.loads(r.out)["trusted"] is False
    assert cli("assets", "register", "package", "evil", str(evil)).code == 0
    r = cli("deploy", "verify", "evil")  # a package asset: named by its version, not its view
    assert r.code == 3 and "evil:1/evil.lmpkg: signed by" in r.err and "views" not in r.err
    r = cli("deploy", "verify", str(good), "--key-file", str(prod))
    assert r.code == 0 and r.out.startswith("OK ") and "(trusted)" in r.out, (r.out, r.err)

    # what uses a package refuses it, in one line naming the file and what to do
    r = cli("deploy", "unpack", str(evil), "--output", str(tmp_path / "x"), "--key-file", str(prod))
    assert r.code == 2 and "not a trusted key" in r.err and str(evil) in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    from lmops.serve.deployments import Deployment, DeploymentSpec

    spec = DeploymentSpec(name="chat", model=str(evil), key_file=str(prod), device="cpu")
    with pytest.raises(UserError, match="not a trusted key"):
        Deployment(spec, None)

    # trusting the other key makes it count
    r = cli("deploy", "trust", f"{other}.pub")
    assert r.code == 0 and "trusted ed25519-" in r.out, r.err
    assert cli("deploy", "verify", str(evil)).code == 0


def test_keygen_no_trust_and_a_pinned_key_overrides_the_store(
    cli: Any, lmops_home: Path, folder: Path, tmp_path: Path
) -> None:
    ship = tmp_path / "ship.key"
    r = cli("deploy", "keygen", "--output", str(ship), "--no-trust", "--json")
    assert r.code == 0 and json.loads(r.out)["trusted"] is None
    assert not list(trust_store(lmops_home).glob("*.pub"))
    pkg = _sealed(folder, tmp_path / "p.lmpkg", ship, ship)
    assert cli("deploy", "verify", str(pkg)).code == 3
    r = cli("deploy", "verify", str(pkg), "--pubkey", f"{ship}.pub")
    assert r.code == 0 and "(trusted)" in r.out


def test_a_bad_file_in_the_trust_store_is_named(
    cli: Any, lmops_home: Path, folder: Path, tmp_path: Path
) -> None:
    keys = generate_keys(tmp_path / "k.key").path
    pkg = _sealed(folder, tmp_path / "p.lmpkg", keys, keys)
    trust_store(lmops_home).mkdir(parents=True)
    (trust_store(lmops_home) / "junk.pub").write_text("not a key")
    r = cli("deploy", "unpack", str(pkg), "--output", str(tmp_path / "x"), "--key-file", str(keys))
    assert r.code == 2 and "junk.pub" in r.err


def test_serve_checks_the_signer_before_it_says_it_serves(
    cli: Any, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lmops serve --model chat=<signed by another key> --pubkey k.pub`` printed "serving
    on" and only then the error; now it fails first, naming the deployment, from the
    header: no byte of the body is read or hashed."""
    keys = generate_keys(tmp_path / "k.key").path
    other = generate_keys(tmp_path / "other.key").path
    pkg = _sealed(folder, tmp_path / "p.lmpkg", other, keys)
    ran: list[Any] = []
    # the server "starts" at once: serve says it serves only then
    monkeypatch.setattr(startup, "run", lambda *a, on_ready, **k: (ran.append(a), on_ready()))

    def no_body(*a: Any, **k: Any) -> Any:
        raise AssertionError("the preflight read the package body")

    monkeypatch.setattr(Package, "check_body", no_body)
    monkeypatch.setattr(Package, "iter_chunks", no_body)
    args = ("serve", "--model", f"chat={pkg}", "--key-file", str(keys))
    r = cli(*args, "--pubkey", f"{keys}.pub")
    assert r.code == 2 and "serving on" not in r.out and not ran, (r.out, r.err)
    assert r.err.startswith("error: deployment 'chat': ") and "not by the trusted key" in r.err
    r = cli(*args)  # no --pubkey, an empty trust store
    assert r.code == 2 and not ran and "deployment 'chat'" in r.err
    assert "not a trusted key" in r.err

    # the right signer but the wrong KEK: also before the banner
    good = _sealed(folder, tmp_path / "good.lmpkg", keys, keys)
    r = cli("serve", "--model", f"chat={good}", "--key-file", str(other), "--pubkey", str(keys))
    assert r.code == 2 and not ran and "sealed with key kek-" in r.err
    r = cli("serve", "--model", f"chat={good}", "--key-file", str(keys), "--pubkey", str(keys))
    assert r.code == 0 and ran and "serving on" in r.out, (r.out, r.err)


def test_messages_name_the_commands_own_options_and_count_bytes_once(
    cli: Any, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    monkeypatch.delenv("LMOPS_KEK", raising=False)
    keys = tmp_path / "k.key"
    assert cli("deploy", "keygen", "--output", str(keys)).code == 0
    # package's option is --kek-file; it was told to give --key-file
    r = cli("deploy", "package", str(folder), "--encrypt", "--output", "nokey")
    assert r.code == 2 and "give --kek-file FILE or set LMOPS_KEK" in r.err
    pkg = _sealed(folder, tmp_path / "p.lmpkg", keys, keys)
    r = cli("serve", "--model", f"chat={pkg}")
    assert r.code == 2 and "deployment 'chat'" in r.err and "give --key-file (key_file:)" in r.err
    # verify with the key makes two passes; each bar counts the package's bytes once
    r = cli("deploy", "verify", str(pkg), "--key-file", str(keys))
    assert r.code == 0, r.err
    totals = {
        label: int(total.replace(",", ""))
        for label, total in re.findall(r"(verify[ a-z]*): [\d,]+/([\d,]+) bytes", r.err)
    }
    assert set(totals) == {"verify digest", "verify files"}, r.err
    assert max(totals.values()) <= pkg.stat().st_size, (totals, pkg.stat().st_size)
