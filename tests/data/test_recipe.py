"""A misspelt operator or parameter in a recipe: the error names the line of the mistake
and the name that was probably meant."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmops.core.errors import UserError
from lmops.data.recipe import load_recipe


def _load(tmp_path: Path, steps: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "name: t\ninputs: [raw.jsonl]\nprocess:\n  - op: clean_unicode\n"
        + steps
        + "output: {path: out}\n"
    )
    load_recipe(path)


def test_a_misspelt_operator_gets_a_did_you_mean(tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        _load(tmp_path, "  - op: exact_dedupe\n")
    assert str(e.value) == (
        f"{tmp_path / 'r.yaml'}:5: process[1]: unknown operator 'exact_dedupe' "
        "(did you mean 'exact_dedup'?); run `lmops data ops` to list them"
    )
    with pytest.raises(UserError, match=r"unknown operator 'frobnicate'; run `lmops data ops`"):
        _load(tmp_path, "  - op: frobnicate\n")


def test_a_misspelt_parameter_names_its_own_line_and_the_one_meant(tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        _load(tmp_path, "  - op: length_filter\n    min_chars: 5\n    max_char: 900\n")
    assert str(e.value) == (
        f"{tmp_path / 'r.yaml'}:7: process[1]: operator 'length_filter': unknown parameter "
        "'max_char' (did you mean 'max_chars'?)"
    )
    # a step's `field:` is a name a step takes too
    with pytest.raises(UserError, match=r"unknown parameter 'fields' \(did you mean 'field'\?\)"):
        _load(tmp_path, "  - op: exact_dedup\n    fields: output\n")


def test_an_unknown_parameter_without_a_close_one_lists_the_parameters(tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        _load(tmp_path, "  - op: clean_whitespace\n    foo: 1\n")
    assert str(e.value).endswith(
        "process[1]: operator 'clean_whitespace': unknown parameter 'foo'; its parameters: "
        "max_blank_lines, keep_indentation, field"
    )
    with pytest.raises(UserError, match=r"unknown parameter 'form'; its parameters: field$"):
        _load(tmp_path, "  - op: fix_mojibake\n    form: NFC\n")


def test_a_bad_parameter_value_names_the_parameter_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"r\.yaml:6: process\[1\]: .*'min_chars': .*integer"):
        _load(tmp_path, "  - op: length_filter\n    min_chars: many\n")


def test_a_step_written_as_data_juicer_writes_it_says_how_to_write_it(tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        _load(tmp_path, "  - clean_whitespace\n")
    assert str(e.value).endswith("r.yaml:5: process[1]: write the step as `- op: clean_whitespace`")
    with pytest.raises(UserError) as e:
        _load(tmp_path, "  - length_filter:\n      min_chars: 5\n")
    assert str(e.value).endswith(
        "r.yaml:5: process[1]: write the step as `- op: length_filter` with its parameters "
        "beside op (min_chars: 5)"
    )


def test_a_folder_without_data_files_is_named_before_the_run(tmp_path: Path) -> None:
    from lmops.data.recipe import Recipe, resolve_inputs

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.md").write_text("# A note\n\nMarkdown is not read from a folder.\n")
    (tmp_path / "raw.jsonl").write_text('{"text": "a document"}\n')
    recipe = Recipe.model_validate(
        {"name": "t", "inputs": ["raw.jsonl", "notes"], "output": {"path": "out"}}
    )
    with pytest.raises(UserError) as e:
        resolve_inputs(recipe, tmp_path, None)
    assert str(e.value) == (
        "inputs[1]: 'notes' matches no data file (.jsonl, .json, .csv, .parquet, .txt, plain "
        "or .gz/.zst); it holds a.md"
    )


def test_one_string_where_a_list_of_strings_is_expected_is_that_one(tmp_path: Path) -> None:
    # a user's recipe said `languages: zh` and was refused ("Input should be a valid list")
    path = tmp_path / "r.yaml"
    path.write_text(
        "name: t\ninputs: [raw.jsonl]\nprocess:\n"
        "  - op: language_id\n    languages: zh\n"
        "  - op: pii_mask\n    types: EMAIL\n"
        "  - op: clean_html\n    drop_content: script\n"
        "output: {path: out}\n"
    )
    ops = load_recipe(path).build_ops()
    assert ops[0].params.languages == ["zh"]  # type: ignore[attr-defined]
    assert ops[1].params.types == ("EMAIL",)  # type: ignore[attr-defined]
    assert ops[2].params.drop_content == ("script",)  # type: ignore[attr-defined]
    # characters given as one string stay refused: "。！" would be one two-character stop
    with pytest.raises(UserError, match=r"'stop_chars'"):
        _load(tmp_path, "  - op: fineweb_quality\n    stop_chars: 。！\n")


@pytest.mark.parametrize("name", ["team/nightly", "..", "a\\b"])
def test_a_recipe_name_is_one_folder(tmp_path: Path, name: str) -> None:
    """The name is the run's work folder: "team/nightly" sat inside recipe "team"'s, which
    removed its temp files and, on a changed recipe, everything in it."""
    path = tmp_path / "r.yaml"
    path.write_text(f"name: '{name}'\ninputs: [raw.jsonl]\noutput: {{path: out}}\n")
    with pytest.raises(UserError) as e:
        load_recipe(path)
    assert str(e.value) == (
        f"{path}:1: name: recipe name {name!r} is not a folder name (it names the run's work "
        "folder); use letters, digits, '.', '_' or '-', without '/'"
    )
