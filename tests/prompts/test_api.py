"""``/api/prompts`` on a real ``lmops serve``: reads with any key, changes with an admin key
(audited), the CLI's one-line errors as 400/404."""

from __future__ import annotations

from tests.api.conftest import Server, server  # noqa: F401  (the module's server fixture)


def test_prompt_routes(server: Server) -> None:  # noqa: F811
    _, reader = server.store.keys.create("reader")  # type: ignore[attr-defined]
    admin, read = server.client(server.admin_key), server.client(reader)
    body = {"name": "qa", "template": "Q: {{question}}", "config": {"temperature": 0}}
    assert read.post("/api/prompts", json=body).status_code == 403
    r = admin.post("/api/prompts", json={**body, "message": "first", "label": "production"})
    assert (
        r.status_code == 201 and r.json()["ref"] == "qa:1" and r.json()["labels"] == ["production"]
    )
    admin.post("/api/prompts", json={**body, "template": "Question: {{question}}"})
    assert read.get("/api/prompts/qa@production").json()["variables"] == ["question"]
    assert [p["latest"] for p in read.get("/api/prompts").json()] == [2]
    assert (
        "+template: 'Question: {{question}}'"
        in read.get("/api/prompts/qa:1/diff/qa:2").json()["diff"]
    )
    out = read.post("/api/prompts/qa:2/render", json={"variables": {"question": "2+2?"}})
    assert out.json() == {"ref": "qa:2", "rendered": "Question: 2+2?"}
    bad = read.post("/api/prompts/qa:2/render", json={"variables": {"q": 1}})
    assert (
        bad.status_code == 400 and "missing variable(s) question" in bad.json()["error"]["message"]
    )
    assert admin.put("/api/prompts/qa:2/labels/production").json() == {
        "label": "production",
        "ref": "qa:2",
    }
    assert admin.put("/api/prompts/qa:5/labels/production").status_code == 404
    assert read.get("/api/prompts/qa@production").json()["ref"] == "qa:2"
    audit = [e.action for e in server.store.audit.list()]  # type: ignore[attr-defined]
    assert "asset.alias" in audit
