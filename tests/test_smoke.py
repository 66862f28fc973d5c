from __future__ import annotations


def test_info_json(cli) -> None:  # type: ignore[no-untyped-def]
    import json

    r = cli("info", "--json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["home"].endswith("lmops-home")
    assert data["database_url"].startswith("sqlite:///")
