"""The prompt registry: immutable versions, moving labels, refs, variables, parse errors,
diff, and the cached ``lmops.prompts.get``."""

from __future__ import annotations

from pathlib import Path

import pytest

import lmops.prompts
from lmops.core.errors import NotFoundError, UserError
from lmops.prompts import create, diff, label, load, parse_template
from lmops.store import Store


def test_versions_are_immutable_and_labels_move(store: Store) -> None:
    v1 = create(store, "qa", "Answer: {{question}}", message="first", config={"temperature": 0})
    v2 = create(store, "qa", "Answer briefly: {{question}}", message="shorter")
    assert (v1.ref, v2.ref) == ("qa:1", "qa:2")
    assert v1.metadata["variables"] == ["question"] and v1.description == "first"
    label(store, "qa:1", "production")
    assert load(store, "qa@production").render(question="2+2?") == "Answer: 2+2?"
    assert load(store, "qa").ref == "qa:2"  # a bare name is the newest version
    label(store, "qa:2", "production")  # the label moves; qa:1 is unchanged
    assert load(store, "qa@production").ref == "qa:2"
    assert load(store, "qa:1").render(question="x") == "Answer: x"
    assert load(store, "qa:1").config == {"temperature": 0}
    with pytest.raises(NotFoundError, match=r"qa:7: no such prompt version; nothing was labelled"):
        label(store, "qa:7", "staging")
    assert "staging" not in store.assets.show("qa").aliases
    # the bytes of a version never change: a re-registration is a new number
    assert store.assets.resolve("qa:1").digest != store.assets.resolve("qa:2").digest


def test_variables_missing_or_unknown_are_named(store: Store) -> None:
    create(store, "greet", "Hello {{name}}, welcome to {{ place }}.")
    p = load(store, "greet")
    assert p.variables == ("name", "place")
    with pytest.raises(UserError, match=r"greet:1: missing variable\(s\) place \(its variables"):
        p.render(name="Ann")
    with pytest.raises(UserError, match=r"unknown variable\(s\) colour"):
        p.render(name="Ann", place="Oslo", colour="red")
    # a lone '}}' is text (JSON in an instruction); values are never rendered again
    assert p.render(name="{{place}}", place="Oslo") == "Hello {{place}}, welcome to Oslo."
    assert parse_template('Reply as {"a": {"b": 1}}').render({}) == 'Reply as {"a": {"b": 1}}'


@pytest.mark.parametrize(
    ("source", "where"),
    [
        ("line one\nsay {{ name", "template:2:5: '{{' is never closed"),
        ("ok {{x}}\n  {{ a b }}", "template:2:3: {{ a b }} is not a variable"),
        ("{{ 1bad }}", "template:1:1: {{ 1bad }} is not a variable"),
    ],
)
def test_a_template_that_does_not_parse_names_line_and_column(source: str, where: str) -> None:
    with pytest.raises(UserError) as e:
        parse_template(source)
    assert str(e.value).startswith(where)
    assert "\n" not in str(e.value)


def test_nothing_is_registered_from_a_broken_template(store: Store, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"template\[1\].content:1:10: '\{\{' is never closed"):
        create(
            store,
            "chat",
            [
                {"role": "system", "content": "Be kind."},
                {"role": "user", "content": "Question {{q"},
            ],
        )
    assert store.assets.list(kind="prompt") == []
    with pytest.raises(UserError, match="unknown model parameter"):
        create(store, "chat", "x", config={"temprature": 1})
    # values are checked as the API checks them: a version no request could use is refused
    # when it is created (it would 400 every request that names it, blaming the request)
    bad = [
        ({"temperature": "abc"}, "config: temperature='abc': Input should be a valid number"),
        ({"temperature": 3}, "config: temperature=3: Input should be less than or equal to 2"),
        ({"max_tokens": 1.5}, "config: max_tokens=1.5: Input should be a valid integer"),
        ({"stop": 5}, "config: stop=5: "),
    ]
    for config, message in bad:
        with pytest.raises(UserError) as e:
            create(store, "chat", "x", config=config)
        assert str(e.value).startswith(f"prompt 'chat': {message}"), str(e.value)
    # a message's own mistake is named by its place, in the words a prompt file gets,
    # not by the other member of template's union (template.str)
    shapes = [
        ([{"role": "user", "content": "hi", "nmae": "x"}], "template[0].nmae: unknown field"),
        ([{"role": "robot", "content": "hi"}], "template[0].role: Input should be"),
        (5, "template: a string (type: text) or a list of {role, content} messages"),
    ]
    for template, message in shapes:
        with pytest.raises(UserError) as e:
            create(store, "chat", template)  # type: ignore[arg-type]
        assert str(e.value).startswith(f"prompt 'chat': {message}"), str(e.value)
    f = tmp_path / "p.yaml"
    f.write_text('type: chat\ntemplate:\n  - {role: user, content: "hi", nmae: x}\n')
    with pytest.raises(UserError, match=r"p.yaml:3: template\[0\].nmae: unknown field"):
        lmops.prompts.registry.load_spec_file(f)
    assert store.assets.list(kind="prompt") == []
    create(store, "chat", "x", config={"temperature": 1, "max_tokens": 8, "stop": ["\n"]})
    # a version stored before values were checked still loads as it was stored
    old = tmp_path / "prompt.yaml"
    old.write_text("type: text\ntemplate: x\nconfig: {temperature: 3}\n")
    store.assets.register("prompt", "old", old)
    assert load(store, "old:1").spec.config == {"temperature": 3}


def test_chat_prompts_render_messages_and_diff_shows_changes(store: Store) -> None:
    msgs = [
        {"role": "system", "content": "You support {{product}}."},
        {"role": "user", "content": "{{input}}"},
    ]
    create(store, "support", msgs, config={"max_tokens": 64}, message="v1")
    create(store, "support", [msgs[0] | {"content": "You support {{product}}. Be brief."}, msgs[1]])
    p = load(store, "support:1")
    assert p.spec.type == "chat"
    assert p.render(product="lmops", input="hi") == [
        {"role": "system", "content": "You support lmops."},
        {"role": "user", "content": "hi"},
    ]
    d = diff(store, "support:1", "support:2")
    assert "-  content: You support {{product}}." in d
    assert "+  content: You support {{product}}. Be brief." in d
    assert "-  max_tokens: 64" in d


def test_get_caches_pinned_versions_and_follows_labels(store: Store) -> None:
    create(store, "cached", "A {{x}}")
    label(store, "cached:1", "production")
    first = lmops.prompts.get("cached@production", store=store)
    assert lmops.prompts.get("cached@production", store=store) is first  # cached
    assert lmops.prompts.get("cached:1", store=store) is lmops.prompts.get("cached:1", store=store)
    create(store, "cached", "B {{x}}")
    label(store, "cached:2", "production")  # moving a label drops its cache entries
    assert lmops.prompts.get("cached@production", store=store).render(x=1) == "B 1"
    # the module-level default store reads LMOPS_HOME, as every other entry point does
    assert lmops.prompts.get("cached:1").render(x=2) == "A 2"


def test_a_misspelt_label_offers_the_close_one_not_creating_it(store: Store) -> None:
    from lmops.core.errors import api_message

    create(store, "support", "Help with {{input}}")
    label(store, "support:1", "production")
    label(store, "support:1", "staging")
    with pytest.raises(NotFoundError) as e:
        load(store, "support@prodution")
    assert str(e.value) == (
        "alias 'prodution' of asset 'support' not found; did you mean support@production?"
    )
    assert api_message(e.value).endswith("did you mean support@production?")
    # nothing close: how to set a new label, as before
    with pytest.raises(NotFoundError, match="set it with `lmops assets alias support:N canary`"):
        load(store, "support@canary")
