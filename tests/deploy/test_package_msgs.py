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
def folder(tmp_path: Path) -> Path:
    """A few small files are enough: nothing here loads weights."""
    f = tmp_path / "model"
    f.mkdir()
    (f / "config.json").write_text('{"model_type": "llama"}')
    (f / "model.safetensors").write_bytes(b"\0" * 5000)
    return f


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
