"""Sizes people read say the units they are counted in. ``human_size`` divides by 1024, so
it labels in KiB/MiB/GiB, as the web console does: SmolLM2's 541,615,138 bytes were shown as
``516.5 MB`` (541.6 MB is what those bytes are in decimal megabytes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def test_human_size_labels_binary_units() -> None:
    from lmops.cli._output import human_size

    assert human_size(1023) == "1023 B"
    assert human_size(1024) == "1.0 KiB"
    assert human_size(541_615_138) == "516.5 MiB"
    assert human_size(3 * 1024**3) == "3.0 GiB"
    assert human_size(5 * 1024**4) == "5.0 TiB"


def test_the_cli_and_the_console_give_one_figure(cli: Any, tmp_path: Path) -> None:
    from lmops.cli._output import human_size
    from lmops.web.app import _size

    for n in (0, 999, 1536, 1_500_000, 541_615_138, 7 * 1024**3, 3 * 1024**4):
        assert human_size(n) == _size(n), n
    f = tmp_path / "blob.bin"
    f.write_bytes(b"\0" * 1_572_864)
    r = cli("assets", "register", "dataset", "blob", str(f))
    assert r.code == 0 and "1.5 MiB" in r.out, r.out
    assert "1.5 MiB" in cli("assets", "show", "blob").out
