"""The console in headless Chromium: log in, every page, run comparison, lineage
click-through, the streaming playground, keys, read-only keys, CSRF, and no request
leaving 127.0.0.1. A screenshot of each page goes to tests/web/artifacts (or
$LMOPS_TEST_ARTIFACTS)."""

from __future__ import annotations

import importlib.util
import re
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.web.conftest import Console, login, settled, shot

PAGES = [
    ("overview", "/ui"),
    ("assets", "/ui/assets"),
    ("asset", "/ui/assets/tiny-lm"),
    ("version-lineage", "/ui/assets/tiny-lm/1"),
    ("file-preview", "/ui/assets/clean-corpus/1/file?path=part-00000.jsonl"),
    ("runs", "/ui/runs"),
    ("run", "/ui/runs/{run0}"),
    ("data", "/ui/data"),
    ("dataset", "/ui/data/clean-corpus/1"),
    ("eval", "/ui/eval"),
    ("eval-report", "/ui/eval/tiny-lm-eval/1?wrong=1"),
    ("prompts", "/ui/prompts"),
    ("prompt-diff", "/ui/prompts/tide-poem"),
    ("playground", "/ui/playground"),
    ("serving", "/ui/serving"),
    ("trace", "/ui/serving/trace?request_id=chatcmpl-seeded"),
    ("monitoring", "/ui/monitoring"),
    ("drift-report", "/ui/monitoring/tides-drift/1"),
    ("pipelines", "/ui/pipelines"),
    ("audit", "/ui/audit"),
]


@pytest.fixture(scope="module")
def admin_page(browser: Any, console: Console) -> Any:
    page = login(browser, console, console.admin)
    yield page
    page.context.close()


def assert_only_loopback(console: Console) -> None:
    hosts = {
        urlsplit(u).hostname for u in console.requests if not u.startswith(("data:", "about:"))
    }
    assert console.requests and hosts == {"127.0.0.1"}, hosts


def test_login_refuses_a_wrong_key_and_pages_need_a_session(browser: Any, console: Console) -> None:
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(f"{console.url}/ui/runs")
    assert urlsplit(page.url).path == "/ui/login"  # redirected, nothing shown
    page.fill("input[name=key]", "lmk-not-a-key")
    page.click("button[type=submit]")
    assert "invalid API key" in page.locator(".error").inner_text()
    page.fill("input[name=key]", console.reader)
    page.click("button[type=submit]")
    page.wait_for_url(f"{console.url}/ui/runs")  # back where it was going
    cookie = next(c for c in ctx.cookies() if c["name"] == "lmops_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert console.reader not in cookie["value"] and "lmk-" not in cookie["value"]
    ctx.close()


def test_every_page_renders_and_no_request_leaves_loopback(
    admin_page: Any, console: Console
) -> None:
    for name, path in PAGES:
        if name == "drift-report" and importlib.util.find_spec("lmops.monitor.report") is None:
            continue  # the monitor stage's report reader is not in this tree yet
        resp = admin_page.goto(console.url + path.format(run0=console.seed["runs"][0]))
        assert resp is not None and resp.status == 200, (name, resp and resp.status)
        assert "frame-ancestors 'none'" in resp.headers.get("content-security-policy", ""), name
        assert admin_page.locator("main h1").count() >= 1, name
        assert admin_page.locator(".error").count() == 0, (name, admin_page.content()[:400])
        shot(admin_page, name)
    # what each page must show, beyond rendering
    admin_page.goto(f"{console.url}/ui/data/clean-corpus/1")
    assert admin_page.locator("table.preview tr").count() == 21  # header + 20 rows
    assert admin_page.locator("img.plot").evaluate("img => img.naturalWidth") > 0
    admin_page.goto(f"{console.url}/ui/serving")
    admin_page.wait_for_selector("#refusals table")
    admin_page.wait_for_selector("#usage table")
    body = admin_page.locator("main").inner_text()
    assert "pii_mask" in body and "tides" in body
    admin_page.goto(f"{console.url}/ui/eval/tiny-lm-eval/1?wrong=1")
    assert admin_page.locator("details.item").count() == 1  # only the wrong item
    admin_page.goto(f"{console.url}/ui/eval")
    admin_page.wait_for_selector("#leaderboard table.board tr")  # loaded after the page shows
    board = admin_page.locator("#leaderboard table.board")
    assert board.locator("tr").count() == 3 and "1" in board.locator("tr").nth(1).inner_text()
    admin_page.goto(f"{console.url}/ui")
    assert "firing: prompt_chars" in admin_page.locator("ul.alerts").inner_text()
    admin_page.goto(f"{console.url}/ui/prompts/tide-poem")
    diff = admin_page.locator("pre.diff").inner_text()
    assert "+- role: system" in diff and "-template: Write one line" in diff, diff
    assert_only_loopback(console)


def test_compare_two_runs(admin_page: Any, console: Console) -> None:
    admin_page.goto(f"{console.url}/ui/runs")
    # the filter swaps the table in place (htmx, served from the package)
    admin_page.select_option("select[name=kind]", "train")
    admin_page.wait_for_function("() => document.querySelectorAll('table.runs tr').length === 3")
    assert "kind=train" in admin_page.url
    for run_id in console.seed["runs"]:
        admin_page.check(f"input[name=ids][value='{run_id}']")
    admin_page.click("text=Compare selected")
    admin_page.wait_for_url(re.compile(r".*/ui/runs/compare\?.*"))
    loss = admin_page.locator("svg.chart[aria-label=loss]")
    assert loss.locator("polyline").count() == 2  # one curve per run, overlaid
    diff = admin_page.locator("table.diff").inner_text()
    assert "config.lr" in diff and "0.0003" in diff and "0.001" in diff
    assert "config.model.layers" not in diff  # the same in both: not a difference
    shot(admin_page, "runs-compare")


def test_compare_two_eval_reports(admin_page: Any, console: Console) -> None:
    admin_page.goto(f"{console.url}/ui/eval")
    admin_page.check("input[name=refs][value='tiny-lm-eval:1']")
    admin_page.check("input[name=refs][value='tiny-lm-eval:2']")
    admin_page.click("#eval-compare button")
    admin_page.wait_for_url(re.compile(r".*/ui/eval/compare\?.*"))
    row = admin_page.locator("table.compare tr", has_text="exact_match").inner_text()
    assert "0.5" in row and "(+0.5)" in row
    shot(admin_page, "eval-compare")


def test_lineage_click_through_from_served_model_to_raw_data(
    admin_page: Any, console: Console
) -> None:
    # tiny-lm@production is the served model; follow its graph upstream to the raw data
    admin_page.goto(f"{console.url}/ui/assets/tiny-lm")
    admin_page.click("a:text-is('v1')")
    admin_page.wait_for_url(f"{console.url}/ui/assets/tiny-lm/1")
    admin_page.click(f"svg.lineage a[data-ref='{console.seed['clean']}']")
    admin_page.wait_for_url(f"{console.url}/ui/assets/clean-corpus/1")
    admin_page.click(f"svg.lineage a[data-ref='{console.seed['raw']}']")
    admin_page.wait_for_url(f"{console.url}/ui/assets/raw-corpus/1")
    admin_page.click("text=corpus.txt")
    assert "The tide comes in." in admin_page.locator("pre.file").inner_text()


def test_trace_an_answer_back_to_its_raw_data(admin_page: Any, console: Console) -> None:
    admin_page.goto(f"{console.url}/ui/serving")
    admin_page.click("text=Trace an answer")
    admin_page.fill("input[name=request_id]", "chatcmpl-seeded")
    admin_page.click("#trace-form button")
    admin_page.wait_for_selector("#trace-request")
    assert admin_page.locator("#answered-by").inner_text() == console.seed["model"]
    sources = admin_page.locator("#trace-sources").inner_text()
    assert console.seed["raw"] in sources
    shot(admin_page, "trace")
    # the graph leads to the raw data, as a version page's does
    admin_page.click(f"svg.lineage a[data-ref='{console.seed['raw']}']")
    admin_page.wait_for_url(f"{console.url}/ui/assets/raw-corpus/1")
    # a key that is not an admin traces its own answers only
    page = login(admin_page.context.browser, console, console.reader)
    page.goto(f"{console.url}/ui/serving/trace?request_id=chatcmpl-seeded")
    assert page.locator("#answered-by").inner_text() == console.seed["model"]
    page.goto(f"{console.url}/ui/serving/trace?request_id=r1")  # boss's request
    assert "no logged request 'r1' of your key viewer" in page.locator(".error").inner_text()
    page.context.close()


def test_a_refused_request_is_traced_by_its_x_request_id(browser: Any, console: Console) -> None:
    # the viewer's refusal, found by the header its client got: why, and what would have answered
    page = login(browser, console, console.reader)
    page.goto(f"{console.url}/ui/serving/trace")
    page.fill("input[name=request_id]", "req-refused-1")
    page.click("#trace-form button")
    page.wait_for_selector("#trace-request")
    assert page.locator("#trace-x-request-id").inner_text() == "req-refused-1"
    assert page.locator("#trace-status").inner_text() == "400"
    assert page.locator("#trace-error").inner_text() == "Sorry, I can't help with that request."
    assert page.locator("#trace-guardrails").inner_text() == "moderation_block input violence"
    assert page.locator("#answered-by").inner_text() == console.seed["model"]
    assert "would have been answered by" in page.locator("table").first.inner_text()
    shot(page, "trace-refused")
    page.context.close()


def test_a_replicas_answer_names_the_replica_and_its_tries(
    admin_page: Any, console: Console
) -> None:
    from lmops.monitor.metering import log_request

    log_request(  # an answer of a list of replicas, sent on from one that refused it
        console.store,
        request_id="chatcmpl-replicas",
        endpoint="chat",
        status=200,
        deployment="replicated",
        model_ref="http://gpu0:8000/v1, http://***@gpu1:8000/v1",
        replica="http://***@gpu1:8000/v1",
        guardrails={
            "tries": [
                {"deployment": "replicated", "replica": "http://gpu0:8000/v1", "status": 502,
                 "reason": "connect", "error": "unreachable"},
                {"deployment": "replicated", "replica": "http://***@gpu1:8000/v1", "status": 200},
            ]
        },
    )  # fmt: skip
    admin_page.goto(f"{console.url}/ui/serving/trace?request_id=chatcmpl-replicas")
    assert admin_page.locator("#trace-replica").inner_text() == "http://***@gpu1:8000/v1"
    assert admin_page.locator("#trace-tries").inner_text().splitlines() == [
        "replicated (http://gpu0:8000/v1) failed: connect",
        "replicated (http://***@gpu1:8000/v1) answered",
    ]
    shot(admin_page, "trace-replicas")


def test_playground_streams_two_deployments_side_by_side(admin_page: Any, console: Console) -> None:
    before = sum(1 for _ in console.store.requests.scan(key="boss"))
    admin_page.goto(f"{console.url}/ui/playground")
    admin_page.select_option("#pane-a select[name=prompt]", "tide-poem@production")
    admin_page.select_option("#pane-a select[name=deployment]", "tides")
    admin_page.select_option("#pane-b select[name=deployment]", "tides-b")
    admin_page.fill("#variables", "topic=tides")
    admin_page.fill("#input", "hello")
    admin_page.click("#run-both")
    # pane A's reply grows token by token: seen partly written before its stream ends
    admin_page.wait_for_function(
        "() => { const p = document.querySelector('#pane-a');"
        " return p.querySelector('.output').textContent.length > 0 && !p.dataset.done; }"
    )
    admin_page.wait_for_function(
        "() => document.querySelector('#pane-a').dataset.done"
        " && document.querySelector('#pane-b').dataset.done"
    )
    a = admin_page.locator("#pane-a .output").inner_text()
    b = admin_page.locator("#pane-b .output").inner_text()
    assert a.split() == [f"tok{i}" for i in range(12)], a
    assert b.split()[:3] == ["calm", "water", "under"], b
    shot(admin_page, "playground-streamed")
    # the runs went through the gateway as the session's key: the request log has them
    console.store.requests  # noqa: B018 - the writer flushes within a second
    for _ in range(50):
        after = sum(1 for _ in console.store.requests.scan(key="boss"))
        if after >= before + 2:
            break
        admin_page.wait_for_timeout(100)
    assert after >= before + 2


def test_playground_names_a_missing_variable(admin_page: Any, console: Console) -> None:
    admin_page.goto(f"{console.url}/ui/playground")
    admin_page.select_option("#pane-a select[name=prompt]", "tide-poem@production")
    admin_page.fill("#variables", "")
    admin_page.click("#pane-a button.run")
    admin_page.wait_for_function("() => document.querySelector('#pane-a.failed')")
    assert "topic" in admin_page.locator("#pane-a .status-line").inner_text()


def test_create_key_shows_secret_once_then_revoke(admin_page: Any, console: Console) -> None:
    admin_page.goto(f"{console.url}/ui/serving")
    admin_page.fill("#create-key input[name=name]", "ci-bot")
    admin_page.fill("#create-key input[name=rpm]", "30")
    admin_page.fill("#create-key input[name=scopes]", "tides")
    admin_page.click("#create-key button")
    secret = admin_page.locator("#secret").inner_text().strip()
    assert secret.startswith("lmk-")
    record = console.store.keys.get("ci-bot")
    assert (record.rpm, record.scopes, record.role) == (30, ["tides"], "user")
    shot(admin_page, "key-created")
    assert (
        httpx.get(
            f"{console.url}/api/assets?kind=prompt", headers={"Authorization": f"Bearer {secret}"}
        ).status_code
        == 200
    )
    admin_page.goto(f"{console.url}/ui/serving")
    assert secret not in admin_page.content()  # never shown again
    admin_page.once("dialog", lambda d: d.accept())
    admin_page.click("button[aria-label='revoke ci-bot']")
    admin_page.wait_for_url(f"{console.url}/ui/serving")
    assert console.store.keys.get("ci-bot").revoked_at is not None
    assert (
        httpx.get(
            f"{console.url}/api/assets?kind=prompt", headers={"Authorization": f"Bearer {secret}"}
        ).status_code
        == 401
    )


def test_edit_a_keys_limits_then_rotate_its_secret(admin_page: Any, console: Console) -> None:
    _, secret = console.store.keys.create("rotor", rpm=30, scopes=["tides"])
    api = f"{console.url}/api/assets?kind=prompt"

    def status(key: str) -> int:
        return httpx.get(api, headers={"Authorization": f"Bearer {key}"}).status_code

    # a console session of the key, to see that rotating ends it at its next request
    with httpx.Client(base_url=console.url) as session:
        token = re.search(r'name="token" value="([^"]+)"', session.get("/ui/login").text)
        assert token is not None
        session.post("/ui/login", data={"key": secret, "token": token.group(1)})
        assert session.get("/ui/runs").status_code == 200

        admin_page.goto(f"{console.url}/ui/serving")
        admin_page.click("summary[aria-label='edit rotor']")
        form = admin_page.locator("#edit-rotor")
        assert form.locator("input[name=rpm]").input_value() == "30"  # filled in as it is
        assert form.locator("input[name=scopes]").input_value() == "tides"
        form.locator("input[name=rpm]").fill("5")
        form.locator("input[name=tpm]").fill("2000")
        form.locator("input[name=scopes]").fill("")  # every deployment
        form.locator("input[name=expires]").fill("2099-01-31")
        shot(admin_page, "key-edit")
        form.locator("button").click()
        admin_page.wait_for_url(f"{console.url}/ui/serving")
        key = console.store.keys.get("rotor")
        assert (key.rpm, key.tpm, key.scopes, key.role) == (5, 2000, None, "user")
        assert key.expires_at is not None and key.expires_at.date().isoformat() == "2099-01-31"
        row = admin_page.locator("#keys tr", has_text="rotor").inner_text()
        assert "5 rpm" in row and "2000 tpm" in row and "2099-01-31" in row
        event = console.store.audit.list(action="key.update", limit=1)[0]
        assert (event.actor, event.origin, event.target) == ("boss", "console", "rotor")
        assert event.details["rpm"] == [30, 5] and event.details["scopes"] == [["tides"], None]
        assert status(secret) == 200  # the same secret, new limits

        # saving the form unchanged changes nothing (the expiry keeps its exact time)
        admin_page.click("summary[aria-label='edit rotor']")
        admin_page.locator("#edit-rotor button").click()
        admin_page.wait_for_url(f"{console.url}/ui/serving")
        assert console.store.keys.get("rotor") == key
        assert console.store.audit.list(action="key.update", limit=1)[0].id == event.id
        # a bad value is refused with the message the CLI gives
        csrf = admin_page.locator("meta[name=csrf-token]").get_attribute("content")
        resp = admin_page.request.post(
            f"{console.url}/ui/keys/rotor/update", form={"csrf": csrf, "rpm": "0", "role": "user"}
        )
        assert resp.status == 400 and "--rpm must be a positive integer" in resp.text()

        admin_page.once("dialog", lambda d: d.accept())
        with admin_page.expect_response(f"{console.url}/ui/keys/rotor/rotate") as rotated:
            admin_page.click("button[aria-label='rotate rotor']")
        assert rotated.value.headers["cache-control"] == "no-store"
        new = admin_page.locator("#secret").inner_text().strip()
        assert new.startswith("lmk-") and new != secret
        assert "New secret for key rotor" in admin_page.locator("main h1").inner_text()
        shot(admin_page, "key-rotated")
        assert status(secret) == 401 and status(new) == 200
        key = console.store.keys.get("rotor")
        assert (key.prefix, key.rpm, key.tpm) == (new[:12], 5, 2000)
        resp = session.get("/ui/runs")  # the console authenticates every request again
        assert resp.status_code == 303 and resp.headers["location"].startswith("/ui/login")

    admin_page.goto(f"{console.url}/ui/serving")
    assert new not in admin_page.content() and new[:12] in admin_page.content()
    console.store.keys.revoke("rotor")
    admin_page.goto(f"{console.url}/ui/serving")
    assert admin_page.locator("summary[aria-label='edit rotor']").count() == 0  # revoked: no edits
    assert admin_page.locator("button[aria-label='rotate rotor']").count() == 0


def test_move_alias_asks_first(admin_page: Any, console: Console) -> None:
    admin_page.goto(f"{console.url}/ui/assets/tide-poem")
    admin_page.fill("#alias-form input[name=alias]", "production")
    admin_page.fill("#alias-form input[name=version]", "1")
    admin_page.click("#alias-form button")
    assert "now points at v2" in admin_page.locator("main").inner_text()
    assert console.store.assets.resolve("tide-poem@production").version == 2  # not yet
    shot(admin_page, "alias-confirm")
    admin_page.click("#confirm-move")
    admin_page.wait_for_url(f"{console.url}/ui/assets/tide-poem")
    assert console.store.assets.resolve("tide-poem@production").version == 1
    event = console.store.audit.list(action="asset.alias", limit=1)[0]
    assert (event.actor, event.origin) == ("boss", "console")
    console.store.assets.alias("tide-poem:2", "production")  # as the other tests expect


def test_read_only_key_sees_no_write_buttons_and_its_writes_are_refused(
    browser: Any, console: Console
) -> None:
    page = login(browser, console, console.reader)
    try:
        page.goto(f"{console.url}/ui/assets/tide-poem")
        assert page.locator("#alias-form").count() == 0
        assert page.locator(".badge").inner_text() == "read-only"
        page.goto(f"{console.url}/ui/serving")
        assert page.locator("#create-key").count() == 0 and page.locator("#keys").count() == 0
        settled(page)
        assert "boss" not in page.locator("main").inner_text()  # only its own usage
        shot(page, "serving-read-only")
        csrf = page.locator("meta[name=csrf-token]").get_attribute("content")
        resp = page.request.post(
            f"{console.url}/ui/assets/tide-poem/alias",
            form={"csrf": csrf, "alias": "production", "version": "1", "confirm": "yes"},
        )
        assert resp.status == 403 and "needs admin" in resp.text()
        resp = page.request.post(
            f"{console.url}/ui/keys", form={"csrf": csrf, "name": "sneaky", "role": "admin"}
        )
        assert resp.status == 403
        assert console.store.assets.resolve("tide-poem@production").version == 2
        assert "sneaky" not in {k.name for k in console.store.keys.list()}
        assert page.goto(f"{console.url}/ui/audit").status == 403
        page.goto(f"{console.url}/ui")
        page.click("text=log out")
        page.wait_for_url(re.compile(r".*/ui/login$"))
        page.goto(f"{console.url}/ui/runs")
        assert urlsplit(page.url).path == "/ui/login"  # the session is gone
    finally:
        page.context.close()


def test_a_forged_or_stale_session_cookie_is_refused(console: Console) -> None:
    for cookie in ("forged", "gAAAAABnot-a-real-token"):
        resp = httpx.get(f"{console.url}/ui/runs", cookies={"lmops_session": cookie})
        assert resp.status_code == 303 and resp.headers["location"].startswith("/ui/login")
    # a session whose key was revoked ends at once
    _, secret = console.store.keys.create("short-lived", role="admin")
    with httpx.Client(base_url=console.url) as client:
        token = re.search(r'name="token" value="([^"]+)"', client.get("/ui/login").text)
        assert token is not None
        client.post("/ui/login", data={"key": secret, "token": token.group(1)})
        assert client.get("/ui/runs").status_code == 200
        console.store.keys.revoke("short-lived")
        resp = client.get("/ui/runs")
        assert resp.status_code == 303 and resp.headers["location"].startswith("/ui/login")


def test_a_copied_cookie_stops_working_after_logout(console: Console) -> None:
    with httpx.Client(base_url=console.url) as client:
        token = re.search(r'name="token" value="([^"]+)"', client.get("/ui/login").text)
        assert token is not None
        client.post("/ui/login", data={"key": console.reader, "token": token.group(1)})
        page = client.get("/ui/runs")
        assert page.status_code == 200
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
        assert csrf is not None
        copied = client.cookies["lmops_session"]
        other = httpx.get(f"{console.url}/ui/runs", cookies={"lmops_session": copied})
        assert other.status_code == 200  # the copy works while the session lives
        assert client.post("/ui/logout", data={"csrf": csrf.group(1)}).status_code == 303
    resp = httpx.get(f"{console.url}/ui/runs", cookies={"lmops_session": copied})
    assert resp.status_code == 303 and resp.headers["location"].startswith("/ui/login")


def test_writes_without_the_csrf_token_are_refused(admin_page: Any, console: Console) -> None:
    admin_page.goto(f"{console.url}/ui/serving")
    for form in ({"name": "no-token"}, {"name": "no-token", "csrf": "forged"}):
        resp = admin_page.request.post(f"{console.url}/ui/keys", form=form)
        assert resp.status == 403 and "CSRF" in resp.text()
    for action in ("revoke", "rotate", "update"):
        resp = admin_page.request.post(
            f"{console.url}/ui/keys/boss/{action}",
            headers={"X-CSRF-Token": "forged"},
            form={"rpm": "1"},
        )
        assert resp.status == 403, action
    assert "no-token" not in {k.name for k in console.store.keys.list()}
    assert console.store.keys.get("boss").revoked_at is None
    assert console.store.keys.get("boss").rpm is None
    assert not console.store.audit.list(action="key.rotate", target="boss")


def test_no_request_of_any_test_left_loopback(console: Console, browser: Any) -> None:
    # last in the module: every page, fragment, script, image and stream the browser
    # asked for in the tests above went to the console server (``browser``: skipped with
    # them when there is no chromium, instead of failing on their missing requests)
    assert len(console.requests) > 50
    assert_only_loopback(console)
