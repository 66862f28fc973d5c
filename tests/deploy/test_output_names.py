"""A deploy job's output name is checked before any model is loaded: a name the store
refuses, or the name of an asset of another kind, is a one-line error with no run started,
from every command that registers something (export, quantize, prune, distill, package,
report, GGUF import) and from the Python functions that the /api/deploy routes call. Before,
``deploy export smol --output "my dir/x"`` wrote all 272 tensors, then said the name was
invalid; a name taken by a dataset was refused only at registration, after the work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.train.tiny import SENTENCES, make_model, make_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("names")
    return make_model(root / "m", make_tokenizer(root / "tok"), seed=5)


def _commands(tiny: Path, tmp: Path) -> dict[str, list[str]]:
    """Each job's command with its output name left as ``{}``; ``tiny`` is registered."""
    from lmops.deploy.gguf import write_gguf

    text = tmp / "text.txt"
    text.write_text(" ".join(SENTENCES))
    gguf_file = tmp / "t.gguf"
    write_gguf(tiny, gguf_file, "f16")
    return {
        "export gguf": ["deploy", "export", "tiny", "--quant", "q4_0", "-o", "{}"],
        "export onnx": ["deploy", "export", "tiny", "--format", "onnx", "-o", "{}"],
        "quantize int8": ["deploy", "quantize", "tiny", "-o", "{}"],
        "quantize gptq4": [
            "deploy", "quantize", "tiny", "--method", "gptq4", "--calibration", str(text),
            "-o", "{}",
        ],
        "quantize bnb": ["deploy", "quantize", "tiny", "--method", "bnb-nf4", "-o", "{}"],
        "prune": [
            "deploy", "prune", "tiny", "--method", "magnitude", "--sparsity", "0.5", "-o", "{}",
        ],
        "distill": [
            "deploy", "distill", "--teacher", "tiny", "--student", "layers:1", "--dataset",
            str(text), "--steps", "1", "--seq-len", "16", "--eval-blocks", "1", "-o", "{}",
        ],
        "package": ["deploy", "package", "tiny", "--encrypt", "-o", "{}"],
        "report": ["deploy", "report", "tiny", "--max-tokens", "64", "-o", "{}"],
        "import gguf": ["assets", "import", "gguf", str(gguf_file), "--name", "{}"],
    }  # fmt: skip


def test_a_bad_or_taken_output_name_is_refused_before_any_work(
    cli: Any, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64

    from lmops.store import Store

    monkeypatch.setenv("LMOPS_KEK", base64.b64encode(b"k" * 32).decode())
    assert cli("assets", "register", "model", "tiny", str(tiny)).code == 0
    taken = tmp_path / "taken.txt"
    taken.write_text("a dataset already holds this name\n")
    assert cli("assets", "register", "dataset", "taken", str(taken)).code == 0
    commands = _commands(tiny, tmp_path)
    for job, args in commands.items():
        for name, says in (
            ("my dir/x", "invalid asset name 'my dir/x'"),
            ("taken", "asset 'taken' is a dataset, not a"),
        ):
            r = cli(*[a.replace("{}", name) for a in args])
            assert r.code == 2 and says in r.err and r.err.count("\n") == 1, (job, r.err)
    store = Store()
    try:  # no job started: the name was refused before the source model was read
        assert store.runs.list() == []
        assert {a.name for a in store.assets.list()} == {"tiny", "taken"}
    finally:
        store.close()


def test_the_functions_behind_the_api_check_the_name_first(store: Any, tiny: Path) -> None:
    """The /api/deploy routes call these functions; they refuse the name themselves."""
    from lmops.core.errors import ConflictError, UserError
    from lmops.deploy.distill import DistillSpec, distill
    from lmops.deploy.gguf import export_gguf
    from lmops.deploy.onnx import export_onnx
    from lmops.deploy.package import package_model
    from lmops.deploy.prune import PruneSpec, prune
    from lmops.deploy.quantize import QuantizeConfig, quantize_model
    from lmops.deploy.report import deploy_report

    store.assets.register("model", "tiny", tiny)
    store.assets.register("model", "m", tiny)
    calls = {
        "export gguf": lambda out: export_gguf(store, "tiny", quant="q8_0", output=out),
        "export onnx": lambda out: export_onnx(store, "tiny", output=out),
        "quantize": lambda out: quantize_model(
            store, "tiny", output=out, config=QuantizeConfig(method="int8")
        ),
        "prune": lambda out: prune(
            PruneSpec(model="tiny", output=out, method="magnitude", sparsity=0.5), store=store
        ),
        "distill": lambda out: distill(
            DistillSpec(teacher="tiny", student="layers:1", dataset="x.txt", output=out),
            store=store,
        ),
        "package": lambda out: package_model(
            "tiny", output=out, sign=Path("no-such-key"), store=store
        ),
        "report": lambda out: deploy_report(store, ["tiny"], output=out),
    }
    for job, call in calls.items():
        with pytest.raises(UserError, match="invalid asset name"):
            call("a/b")
        # "m" is a model: a package or a report may not take its name; a model may
        wrong = "package" if job == "package" else "deploy_report" if job == "report" else None
        if wrong is not None:
            with pytest.raises(ConflictError, match=f"'m' is a model, not a {wrong}"):
                call("m")
    assert store.runs.list() == []


def test_unpack_into_an_existing_folder_is_refused_before_the_package_is_read(
    cli: Any, folder: Path, tmp_path: Path
) -> None:
    keyfile = tmp_path / "keys.json"
    assert cli("deploy", "keygen", "--output", str(keyfile)).code == 0
    r = cli("deploy", "package", str(folder), "--sign", str(keyfile), "-o", "pkg", "--json")
    assert r.code == 0, r.err
    there = tmp_path / "there"
    there.mkdir()
    r = cli("deploy", "unpack", "pkg", "--output", str(there))
    # one line: no progress bar started and "stopped" at 0 bytes before it
    assert r.code == 2 and r.err == f"error: {there} exists; unpack into a new folder\n", r.err
    assert list(there.iterdir()) == []
