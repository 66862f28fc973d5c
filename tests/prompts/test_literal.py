"""Text with template syntax in it (a demo row of code, of Jinja, of the template's own
``{{input}}``) written into a prompt stays that text: when lmops renders the prompt, and
when an eval task renders it as its ``doc_to_text``, which is Jinja (``{%`` and ``{#`` open
tags there). ``literal`` writes it with Jinja's own escape, ``{{ '{' }}``, which lmops'
templates read too."""

from __future__ import annotations

import pytest

from lmops.core.errors import UserError
from lmops.eval.tasks import render_text
from lmops.prompts.template import Template, literal

ADVERSARIAL = [
    "{% raw %}x{% endraw %}",  # a Jinja block
    "{% if a %}yes{% endif %}",
    "{# not a comment #} after",  # a Jinja comment would swallow text
    'printf("{%d}\\n", n); {%s}',  # C formats
    "{{ }} and {{input}} and {{ input }}",  # the template's own variable, as text
    "{{ '{{' }}",  # the escape itself, as text
    "C:\\path\\{{x}}\\ and \\\\{% a %}",  # backslashes before tags
    "{",
    "{{",
    "{{{",
    "}}",
    "%}",
    "#}",
    "{-",
    "{%-",
    "{#-",
    'json {"a": {"b": {}}} ends with {',
    "a line\r\nwindows line\rold mac line",  # Jinja reads a bare \r as \n
    "",
]


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_literal_text_renders_as_itself_in_lmops_and_in_eval_jinja(text: str) -> None:
    source = f"{literal(text)}Q: {{{{input}}}}{literal(text)}"
    want = f"{text}Q: it's {{% x %}}{text}"
    assert Template(source).variables == ("input",)
    assert Template(source).render({"input": "it's {% x %}"}) == want
    assert render_text(source, {"input": "it's {% x %}"}) == want


def test_a_quoted_string_in_braces_is_text() -> None:
    t = Template("{{ '{{' }}x}} {{\"{%\"}} {{ 'a\\tb\\\\' }}{{v}}")
    assert t.variables == ("v",) and t.render({"v": 1}) == "{{x}} {% a\tb\\1"
    assert Template("{{ '}}' }}").render({}) == "}}"  # quotes are read as Jinja reads them
    with pytest.raises(UserError, match=r"^t:2:3: unknown escape '\\q' in a quoted string"):
        Template("ok\n  {{ 'a\\q' }}", where="t")
    with pytest.raises(UserError, match=r"^t:1:1: \{\{ 'open \}\} is not a variable"):
        Template("{{ 'open }}", where="t")
