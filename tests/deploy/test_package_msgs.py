"""Package commands say what they did and refuse what they cannot do, in one line:
a KEK without ``--encrypt``, a folder or unreadable file as a key, ``--allow-unsigned``
offered where serve has no such flag, "decrypted" said of a plaintext package, and
``key_file:`` / ``public_key:`` on a deployment that is not a package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.core.sealed import generate_keys


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    return generate_keys(tmp_path / "prod.key").path


def _one_line_error(r: Any) -> str:
    assert r.code == 2, (r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.err
    return lines[0]


def test_kek_file_without_encrypt_is_refused(
    cli: Any, store: Any, folder: Path, keys: Path
) -> None:
    r = cli(
        "deploy", "package", str(folder), "--sign", str(keys), "--kek-file", str(keys),
        "--output", "zz2",
    )  # fmt: skip
    msg = _one_line_error(r)
    assert "--encrypt" in msg and "--kek-file" in msg
    with pytest.raises(UserError):  # nothing registered
        store.assets.resolve("zz2")


def _sealed(folder: Path, out: Path, keys: Path, *, sign: bool = True) -> Path:
    from lmops.core.sealed import load_kek, load_signing_key, write_package

    signing_key = load_signing_key(keys) if sign else None
    write_package(folder, out, signing_key=signing_key, kek=load_kek(keys))
    return out


def test_a_folder_as_a_key_is_a_one_line_error(
    cli: Any, folder: Path, keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lmops deploy trust /tmp`` was exit 70 (internal error: IsADirectoryError); so were
    --pubkey, --key-file, --sign, --kek-file and public_key:/key_file: in a deployments
    file given a folder."""
    from lmops.serve import startup

    monkeypatch.setattr(startup, "run", lambda *a, **k: None)
    d = tmp_path / "adir"
    d.mkdir()
    pkg = _sealed(folder, tmp_path / "p.lmpkg", keys)

    def refused(*args: str) -> str:
        msg = _one_line_error(cli(*args))
        assert str(d) in msg and "folder" in msg, msg
        return msg

    refused("deploy", "trust", str(d))
    refused("deploy", "verify", str(pkg), "--pubkey", str(d))
    refused("deploy", "verify", str(pkg), "--key-file", str(d))
    refused(
        "deploy", "unpack", str(pkg), "--output", str(tmp_path / "x"), "--key-file", str(d),
        "--pubkey", f"{keys}.pub",
    )  # fmt: skip
    assert not (tmp_path / "x").exists()
    refused("deploy", "package", str(folder), "--sign", str(d), "--output", "a")
    refused("deploy", "package", str(folder), "--encrypt", "--kek-file", str(d), "--output", "b")
    refused("serve", "--model", f"chat={pkg}", "--key-file", str(keys), "--pubkey", str(d))
    for field, value in (("public_key", d), ("key_file", d)):
        dep = tmp_path / f"{field}.yaml"
        other = "key_file" if field == "public_key" else "public_key"
        dep.write_text(
            f"deployments:\n  - name: chat\n    model: {pkg}\n    {field}: {value}\n"
            f"    {other}: {keys if other == 'key_file' else str(keys) + '.pub'}\n"
        )
        msg = refused("serve", "--deployments", str(dep))
        assert "deployment 'chat'" in msg, msg


def test_an_unreadable_key_file_is_a_one_line_error(
    keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmops.core.sealed import load_kek, load_public_key, load_signing_key

    real = Path.read_text

    def denied(self: Path, *a: Any, **k: Any) -> str:
        if self == keys:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", denied)
    for load in (load_kek, load_public_key, load_signing_key):
        with pytest.raises(UserError) as e:
            load(keys)
        msg = str(e.value)
        assert str(keys) in msg and "Permission denied" in msg and "\n" not in msg, msg


def test_serve_does_not_offer_allow_unsigned_and_package_warns(
    cli: Any, store: Any, folder: Path, keys: Path, tmp_path: Path
) -> None:
    """serve refused an unsigned package saying "or pass --allow-unsigned", an option serve
    does not have; and package --encrypt without --sign said nothing about it."""
    pkg = _sealed(folder, tmp_path / "unsigned.lmpkg", keys, sign=False)
    msg = _one_line_error(cli("serve", "--model", f"chat={pkg}", "--key-file", str(keys)))
    assert "not signed" in msg and "--sign KEY" in msg and "--allow-unsigned" not in msg, msg
    # verify and unpack have the option, and still offer it
    msg = _one_line_error(cli("deploy", "verify", str(pkg), "--key-file", str(keys)))
    assert "--allow-unsigned" in msg

    r = cli(
        "deploy", "package", str(folder), "--encrypt", "--kek-file", str(keys),
        "--output", "unsigned",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert "warning:" in r.err and "lmops serve" in r.err and "--sign" in r.err, r.err
    r = cli(
        "deploy", "package", str(folder), "--encrypt", "--kek-file", str(keys),
        "--sign", str(keys), "--output", "signed",
    )  # fmt: skip
    assert r.code == 0 and "warning" not in r.err, r.err


def test_verify_says_checked_not_decrypted_for_a_plaintext_package(
    cli: Any, folder: Path, keys: Path, tmp_path: Path
) -> None:
    """A signed, unencrypted package verified "every file decrypted and checked" with
    "decrypted": true, and a --key-file given for it was silently accepted."""
    import json

    from lmops.core.sealed import load_signing_key, write_package

    pkg = tmp_path / "plain.lmpkg"
    write_package(folder, pkg, signing_key=load_signing_key(keys))
    r = cli("deploy", "verify", str(pkg), "--pubkey", f"{keys}.pub")
    assert r.code == 0, r.err
    assert "decrypted" not in r.out and "every file checked" in " ".join(r.out.split()), r.out
    assert "warning" not in r.err, r.err
    r = cli("deploy", "verify", str(pkg), "--pubkey", f"{keys}.pub", "--json")
    out = json.loads(r.out)
    assert out["decrypted"] is False and out["files_checked"] is True and not out["encrypted"]

    r = cli("deploy", "verify", str(pkg), "--pubkey", f"{keys}.pub", "--key-file", str(keys))
    assert r.code == 0 and "decrypted" not in r.out, r.out
    assert "warning:" in r.err and "not encrypted" in r.err and "--key-file" in r.err, r.err
    dest = tmp_path / "out"
    r = cli(
        "deploy", "unpack", str(pkg), "--output", str(dest), "--pubkey", f"{keys}.pub",
        "--key-file", str(keys), "--json",
    )  # fmt: skip
    assert r.code == 0 and (dest / "config.json").exists(), r.err
    assert json.loads(r.out)["decrypted"] is False and "not encrypted" in r.err

    # an encrypted package with its key: decrypted, and no warning
    sealed = _sealed(folder, tmp_path / "sealed.lmpkg", keys)
    r = cli("deploy", "verify", str(sealed), "--pubkey", f"{keys}.pub", "--key-file", str(keys))
    assert r.code == 0 and "warning" not in r.err, r.err
    assert "every file decrypted and checked" in " ".join(r.out.split()), r.out


def test_key_fields_on_a_plain_model_deployment_are_refused(
    cli: Any, folder: Path, keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """key_file:/public_key: on a deployment of a model folder served silently: the user
    believed the signer was pinned, and nothing was checked."""
    from lmops.serve import startup

    ran: list[Any] = []
    monkeypatch.setattr(startup, "run", lambda *a, **k: ran.append(a))
    dep = tmp_path / "deployments.yaml"
    dep.write_text(
        f"deployments:\n  - name: chat\n    model: {folder}\n    public_key: {keys}.pub\n"
    )
    msg = _one_line_error(cli("serve", "--deployments", str(dep)))
    assert "deployment 'chat'" in msg and "public_key" in msg and "package only" in msg, msg
    assert not ran

    # serve's own --key-file/--pubkey apply to the packages among several deployments:
    # a plain folder beside a package is still served
    pkg = _sealed(folder, tmp_path / "p.lmpkg", keys)
    r = cli(
        "serve", "--model", f"plain={folder}", "--model", f"sealed={pkg}",
        "--key-file", str(keys), "--pubkey", f"{keys}.pub",
    )  # fmt: skip
    assert r.code == 0 and ran, (r.out, r.err)
