"""Store pages of the console over plain HTTP (no browser): the real app on loopback, logged
in as an admin through the login form.

- Previewing a file of an external reference (a local file a job read, recorded by path):
  the recorded path is the file itself, and the page joined the file's name onto it, a 500
  (``NotADirectoryError``) for every such link.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.web.conftest import Console


@pytest.fixture
def admin(console: Console) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=console.url, timeout=30) as client:
        token = re.search(r'name="token" value="([^"]+)"', client.get("/ui/login").text)
        assert token is not None
        r = client.post("/ui/login", data={"key": console.admin, "token": token.group(1)})
        assert r.status_code == 303, r.text
        yield client


def _file_links(page: str) -> list[str]:
    return [h.replace("&amp;", "&") for h in re.findall(r'href="([^"]*/file\?path=[^"]*)"', page)]


def test_external_file_and_folder_previews_open(
    admin: httpx.Client, console: Console, tmp_path: Path
) -> None:
    one = tmp_path / "bad" / "good.jsonl"
    one.parent.mkdir()
    one.write_text('{"text": "an external row"}\n')
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "b.txt").write_text("beta")
    links: list[str] = []
    for path in (one, folder):
        v = console.store.assets.external(path)
        page = admin.get(f"/ui/assets/{v.asset}/{v.version}")
        assert page.status_code == 200
        found = _file_links(page.text)
        assert found, page.text
        links += found
    assert len(links) == 3
    for link in links:
        r = admin.get(link)
        assert r.status_code == 200, (link, r.status_code, r.text[:300])
    texts = [admin.get(link).text for link in links]
    assert any("an external row" in t for t in texts)
    assert any("alpha" in t for t in texts) and any("beta" in t for t in texts)
    raw = admin.get(links[0] + "&raw=1")
    assert raw.status_code == 200 and raw.content == one.read_bytes()
