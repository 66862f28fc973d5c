"""Store and monitoring pages of the console over plain HTTP (no browser): the real app on
loopback, logged in as an admin through the login form.

- Previewing a file of an external reference (a local file a job read, recorded by path):
  the recorded path is the file itself, and the page joined the file's name onto it, a 500
  (``NotADirectoryError``) for every such link.
- A deleted dataset's version page linked to its data page, which is a 404 for a version
  that is not READY; it shows DELETED instead.
- A run's page shows the tail of its log (escaped), or why it has none.
- Canaries that never ran (a setup error) are counted and explained on the monitoring pages.
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


def test_a_deleted_datasets_page_shows_deleted_not_a_dead_link(
    admin: httpx.Client, console: Console, tmp_path: Path
) -> None:
    src = tmp_path / "shake.txt"
    src.write_text("To be, or not to be\n")
    v = console.store.assets.register("dataset", "shake", src)
    page = admin.get(f"/ui/assets/shake/{v.version}").text
    assert f'href="/ui/data/shake/{v.version}"' in page  # READY: the link opens
    assert admin.get(f"/ui/data/shake/{v.version}").status_code == 200
    console.store.assets.delete(v.ref)
    r = admin.get(f"/ui/assets/shake/{v.version}")
    assert r.status_code == 200
    assert "/ui/data/shake/" not in r.text
    assert re.search(r"<dt>data</dt><dd><span class=\"status deleted\">DELETED</span>", r.text)
    for href in re.findall(r'href="(/ui/[^"#]*)"', r.text):  # no link on it is dead
        if "/logout" in href:
            continue
        assert admin.get(href.replace("&amp;", "&")).status_code != 404, href


def test_a_runs_page_shows_the_tail_of_its_log(admin: httpx.Client, console: Console) -> None:
    import logging

    from lmops.core.errors import UserError

    with pytest.raises(UserError), console.store.runs.track("train", name="logged") as run:
        for i in range(250):
            logging.getLogger("lmops.train").warning("line %d <b>", i)
        raise UserError("stopped <here>")
    page = admin.get(f"/ui/runs/{run.id}")
    assert page.status_code == 200
    assert "The last 200 of" in page.text and f"lmops runs log {run.id}" in page.text
    assert "line 249 &lt;b&gt;" in page.text and "line 10 " not in page.text  # escaped, tail only
    assert "UserError: stopped &lt;here&gt;" in page.text
    old = console.store.runs.start("eval")
    Path(str(old.log_path)).unlink()
    page = admin.get(f"/ui/runs/{old.id}")
    assert page.status_code == 200 and "have none" in page.text


def test_monitoring_pages_show_canaries_that_never_ran(admin: httpx.Client) -> None:
    """A canary run that could not reach its model (a refused key) is not a quiet "0
    failed": the list and the report say how many never ran, and why."""
    listing = admin.get("/ui/monitoring")
    assert listing.status_code == 200
    assert "1 ok · 1 failed · " in listing.text and "2 not run" in listing.text
    assert "the gateway refused the key (401)" in listing.text  # the cell's title
    report = admin.get("/ui/monitoring/tides-drift/1")
    assert report.status_code == 200
    # the colon follows the words: no badge (whose padding read as "2 not run :") between
    assert "2 not run:</strong> the gateway refused the key (401)" in report.text


def test_a_datasets_page_shows_what_its_run_dropped(admin: httpx.Client) -> None:
    """The report's dropped examples (escaped) and the dataset of every dropped document."""
    page = admin.get("/ui/data/clean-corpus/1")
    assert page.status_code == 200
    assert "Dropped examples" in page.text and "document 7 &lt;b&gt;about&lt;/b&gt;" in page.text
    assert 'href="/ui/data/clean-corpus-dropped/1"' in page.text
    assert admin.get("/ui/data/clean-corpus-dropped/1").status_code == 200
