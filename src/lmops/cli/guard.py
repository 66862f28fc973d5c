"""``lmops guard``: the gateway's moderation classifier (train on your own rows, evaluate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmops.cli._output import console, print_json

app = typer.Typer(
    help="The gateway's moderation classifier: train it on your own labelled rows, evaluate it.",
    no_args_is_help=True,
)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


@app.command("train")
def train_cmd(
    data: Annotated[
        list[Path],
        typer.Option(
            "--data",
            help='JSONL rows {"text", "label": harmful|benign, "category"?, "group"?, '
            '"calibrate"?} (.jsonl or .jsonl.gz, repeatable); rows with split test are left '
            "out; calibrate false: trained on, not counted by --max-fp.",
        ),
    ],
    output: Annotated[Path, typer.Option("--output", help="Model file to write (.npz).")],
    with_builtin: Annotated[
        bool, typer.Option("--with-builtin", help="Add the shipped data set's training rows.")
    ] = False,
    threshold: Annotated[
        float | None, typer.Option(help="Fixed threshold (default: by the out-of-fold rule).")
    ] = None,
    max_fp: Annotated[
        float,
        typer.Option(
            "--max-fp",
            help="The threshold rule: the lowest threshold whose out-of-fold false-positive "
            "rate on benign rows (but those with calibrate false) is at most this.",
        ),
    ] = 0.02,
    max_fp_by: Annotated[
        str | None,
        typer.Option(
            "--max-fp-by",
            help="A row field (e.g. kind): --max-fp must also hold within each of its values "
            "with enough counted benign rows (50, and 1/--max-fp at lower caps), so no one "
            "kind of look-alike is refused far above it. Needs the out-of-fold rule (no "
            "--threshold, --folds 2 or more).",
        ),
    ] = None,
    folds: Annotated[
        int, typer.Option(help="Folds, rows grouped by their group field (0: none, 0.5).")
    ] = 4,
    bits: Annotated[int, typer.Option(help="N-gram feature buckets: 2**bits.")] = 18,
    hidden: Annotated[int, typer.Option(help="Units of the embedding layers.")] = 64,
    epochs: Annotated[int, typer.Option()] = 6,
    seed: Annotated[int, typer.Option()] = 0,
    seeds: Annotated[
        int,
        typer.Option(
            help="Models averaged into the one written (seeds seed, seed+1, ...); same size "
            "and cost to score as one."
        ),
    ] = 4,
    dropout: Annotated[
        float,
        typer.Option(help="N-gram dropout while training (0-1): no phrase decides alone."),
    ] = 0.3,
    as_json: JsonOpt = False,
) -> None:
    """Train a moderation classifier; use it with guardrails ``classifier: PATH.npz``."""
    from lmops.security import moderation

    rows = [r for path in data for r in moderation.read_labeled(path)]
    if with_builtin:
        rows += moderation.read_labeled(moderation.builtin_data_path())
    report = moderation.train_moderation_classifier(
        rows, output, bits=bits, hidden=hidden, epochs=epochs, seed=seed, seeds=seeds,
        dropout=dropout, folds=folds, max_fp=max_fp, threshold=threshold, max_fp_by=max_fp_by,
    )  # fmt: skip
    if as_json:
        print_json(report.to_dict())
        return
    cv = (
        f", out-of-fold recall {report.cv_recall:.3f}, false positives "
        f"{report.cv_false_positive_rate:.3f}"
        if report.cv_recall is not None and report.cv_false_positive_rate is not None
        else ""
    )
    console.print(
        f"wrote {output}: {report.harmful} harmful, {report.benign} benign rows, "
        f"threshold {report.threshold}{cv}"
    )
    console.print(f"threshold rule: {report.threshold_rule}", highlight=False)
    worst = sorted(report.cv_false_positive_rate_by.items(), key=lambda kv: -kv[1])[:3]
    if worst:
        rates = ", ".join(f"{k} {v:.3f}" for k, v in worst)
        console.print(f"highest false-positive rates by {max_fp_by}: {rates}", highlight=False)


@app.command("eval")
def eval_cmd(
    data: Annotated[Path, typer.Option("--data", help="JSONL rows as for `train`.")],
    model: Annotated[
        str, typer.Option("--model", help="builtin or a model file (.npz).")
    ] = "builtin",
    split: Annotated[str | None, typer.Option(help="Only rows of this split (e.g. test).")] = None,
    by: Annotated[
        list[str] | None,
        typer.Option(help="Also per value of this row field (repeatable; default: lang)."),
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Threshold (default: the model's).")
    ] = None,
    encoder: Annotated[
        str,
        typer.Option(
            help="The second stage, as the gateway's classifier_encoder: builtin, off or an "
            "encoder file (.npz)."
        ),
    ] = "builtin",
    as_json: JsonOpt = False,
) -> None:
    """Recall on harmful rows and false positives on benign rows, at the model's threshold
    (with the second stage deciding the rows the model is unsure of, as the gateway does)."""
    from lmops.security import moderation
    from lmops.security.moderation.encoder import builtin_encoder, load_encoder

    m = moderation.builtin_model() if model == "builtin" else moderation.load_model(model)
    stage = (
        None
        if encoder == "off"
        else builtin_encoder()
        if encoder == "builtin"
        else load_encoder(encoder)
    )
    rows = [r for r in moderation.read_labeled(data) if split is None or r.split == split]
    result = moderation.evaluate(m, rows, threshold=threshold, by=by or ["lang"], encoder=stage)
    if as_json:
        print_json(result)
        return
    second = "" if stage is None else f" (second stage: {stage.path.name})"
    console.print(
        f"{len(rows)} rows, threshold {result['threshold']}{second}: recall {result['recall']}, "
        f"false-positive rate {result['false_positive_rate']}"
    )
