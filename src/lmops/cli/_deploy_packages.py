"""``lmops deploy keygen / package / verify / unpack / prune / distill``: the commands over
:mod:`lmops.deploy.package`, :mod:`lmops.deploy.prune` and :mod:`lmops.deploy.distill`."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from lmops.cli._output import console, human_size, print_json
from lmops.cli.deploy import app

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
PubkeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--pubkey", help="Trusted signer: a key file or its .pub; the package must carry it."
    ),
]
KeyFileOpt = Annotated[
    Path | None,
    typer.Option("--key-file", help="Key file holding the key-encryption key (else $LMOPS_KEK)."),
]
UnsignedOpt = Annotated[
    bool, typer.Option("--allow-unsigned", help="Accept a package without a signature.")
]


@app.command("keygen")
def keygen_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="Key file to write (0600).")],
    trust: Annotated[
        bool,
        typer.Option(
            help="Add the public key to $LMOPS_HOME/trusted-keys, so this home serves and "
            "unpacks packages signed with it without --pubkey."
        ),
    ] = True,
    json_: JsonOpt = False,
) -> None:
    """Write a key file (a key-encryption key and an Ed25519 signing key) and OUTPUT.pub,
    and trust the public key here (--no-trust: not)."""
    from lmops.deploy.package import keygen

    keys, trusted = keygen(output, trust_it=trust)
    if json_:
        print_json(
            {
                "path": str(keys.path),
                "public_path": str(keys.public_path),
                "kek_id": keys.kek_id,
                "key_id": keys.key_id,
                "trusted": str(trusted) if trusted else None,
            }
        )
        return
    here = f"; trusted here ({trusted})" if trusted else ""
    console.print(
        f"wrote {keys.path} (secret: {keys.kek_id}, signing key {keys.key_id}) and "
        f"{keys.public_path} (give it to whoever serves or verifies: lmops deploy trust "
        f"FILE.pub){here}",
        markup=False,
    )


@app.command("trust")
def trust_cmd(
    key: Annotated[Path, typer.Argument(help="A signer's .pub (or key file: its public half).")],
    json_: JsonOpt = False,
) -> None:
    """Trust a signer: packages it signed are served and unpacked here without --pubkey.
    Stored in $LMOPS_HOME/trusted-keys (remove the file to stop trusting it)."""
    from lmops.core.sealed import key_id, load_public_key
    from lmops.deploy.package import trust

    dest = trust(key)
    kid = key_id(load_public_key(dest))
    if json_:
        print_json({"key_id": kid, "path": str(dest)})
        return
    console.print(f"trusted {kid} ({dest})", markup=False)


@app.command("package")
def package_cmd(
    model: Annotated[str, typer.Argument(help="Model asset ref or local model folder.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Package asset name.")],
    sign: Annotated[
        Path | None, typer.Option("--sign", help="Key file to sign with (lmops deploy keygen).")
    ] = None,
    encrypt: Annotated[
        bool, typer.Option("--encrypt", help="Encrypt (AES-256-GCM) under the KEK.")
    ] = False,
    kek_file: Annotated[
        Path | None,
        typer.Option("--kek-file", help="Key file holding the KEK (else $LMOPS_KEK)."),
    ] = None,
    chunk_mib: Annotated[int, typer.Option(help="Chunk size in MiB (1-4).")] = 4,
    json_: JsonOpt = False,
) -> None:
    """Seal MODEL into one signed (and encrypted) file, registered as a package asset."""
    from lmops.cli._output import err_console
    from lmops.deploy.package import package_model

    r = package_model(
        model,
        output=output,
        sign=sign,
        encrypt=encrypt,
        kek_file=kek_file,
        chunk_mib=chunk_mib,
        show_progress=not json_,
    )
    if not r.signed_by:  # after the work, so that a refusal stays one line
        # verify/unpack accept it with --allow-unsigned, but serve never does
        err_console.print(
            f"warning: {r.ref} is not signed, and lmops serve refuses an unsigned package; "
            "package it again with --sign KEY to serve it",
            markup=False,
            soft_wrap=True,
        )
    if json_:
        print_json(r)
        return
    what = ", ".join(
        ([f"signed by {r.signed_by}"] if r.signed_by else [])
        + ([f"encrypted under {r.kek_id}"] if r.kek_id else [])
    )
    console.print(
        f"{r.ref}: {r.files} files, {human_size(r.size)}, {what} ({r.seconds:.1f} s)\n{r.path}",
        markup=False,
    )


@app.command("verify")
def verify_cmd(
    package: Annotated[str, typer.Argument(help="Package file or package asset ref.")],
    pubkey: PubkeyOpt = None,
    key_file: KeyFileOpt = None,
    allow_unsigned: UnsignedOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Check a package's signature and every byte; with a key, decrypt and check each file.

    Exit 0: intact and signed by a trusted key (--pubkey, or one in $LMOPS_HOME/trusted-keys)
    or unsigned with --allow-unsigned. Exit 3: intact, but the signer is not trusted, so the
    signature proves nothing (anyone can make a key); serve and unpack refuse it. Exit 2:
    damaged, a wrong key, or refused."""
    from lmops.cli._output import err_console
    from lmops.deploy.package import verify_package

    r = verify_package(
        package,
        pubkey=pubkey,
        key_file=key_file,
        allow_unsigned=allow_unsigned,
        show_progress=not json_,
    )
    _key_not_needed(key_file, r)
    untrusted = r.signed_by is not None and not r.trusted
    if json_:
        print_json(r)
    else:
        depth = (
            "every file decrypted and checked"
            if r.decrypted
            else "every file checked"
            if r.files_checked
            else "body checked (encrypted: give --key-file to check each file's digest too)"
        )
        console.print(
            f"{'UNTRUSTED' if untrusted else 'OK'} {r.ref or r.path}: {r.files} files, "
            f"{human_size(r.size)}, signed by {r.signed_by or 'nobody'}"
            f"{'' if untrusted else ' (trusted)' if r.signed_by else ''}; {depth}",
            markup=False,
        )
    if untrusted:
        from lmops.core.sealed import untrusted as untrusted_line
        from lmops.store.refs import name_views  # a view's file is named by its version

        # stderr, also with --json: a script reading the JSON still hears it
        err_console.print(
            "warning: the signature was NOT checked against a trusted key: "
            + name_views(untrusted_line(Path(r.path), r.signed_by or "")),
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(3)


def _key_not_needed(key_file: Path | None, r: Any) -> None:
    """Warn (stderr, also with --json) that --key-file was given for a package that is not
    encrypted: it was not used, and the user may think the package is encrypted."""
    if key_file is None or r.encrypted:
        return
    from lmops.cli._output import err_console

    err_console.print(
        f"warning: {r.ref or r.path} is not encrypted; --key-file {key_file} was not needed "
        "(nothing was decrypted)",
        markup=False,
        soft_wrap=True,
    )


@app.command("unpack")
def unpack_cmd(
    package: Annotated[str, typer.Argument(help="Package file or package asset ref.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="New folder to write.")],
    pubkey: PubkeyOpt = None,
    key_file: KeyFileOpt = None,
    allow_unsigned: UnsignedOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Decrypt a package into a new folder (plaintext on disk: for serve, prefer the package).

    Ctrl-C before the folder is complete leaves nothing (exit 130); once it is in place the
    unpack has happened, and a Ctrl-C while the result is printed does not change that."""
    from lmops.cli._output import interrupted
    from lmops.deploy.package import unpack_package

    existed = output.exists()  # then refused: unpack writes a new folder only
    try:
        r = unpack_package(
            package,
            output,
            pubkey=pubkey,
            key_file=key_file,
            allow_unsigned=allow_unsigned,
            show_progress=not json_,
        )
    except KeyboardInterrupt:
        if existed or not output.is_dir():  # the files wait in a temp folder, removed
            interrupted(
                f"interrupted unpacking {package}; nothing was written ({output} not created)"
            )
        r = None  # the folder was renamed into place (the last step) before the Ctrl-C came
    # it has finished: a Ctrl-C while that is printed leaves the exit 0 (it made it 130)
    with contextlib.suppress(KeyboardInterrupt):
        _print_unpacked(r, output, key_file, json_)


def _print_unpacked(r: Any, output: Path, key_file: Path | None, json_: bool) -> None:
    """What ``unpack`` wrote; ``r`` None: a Ctrl-C came after the folder was in place, so
    what is there is counted."""
    if r is None:
        files = [p for p in output.rglob("*") if p.is_file()]
        count, size = len(files), sum(p.stat().st_size for p in files)
        if json_:
            print_json({"output": str(output), "files": count, "size": size})
            return
    else:
        _key_not_needed(key_file, r)
        if json_:
            print_json(r)
            return
        count, size = r.files, r.size
    console.print(f"unpacked {count} files ({human_size(size)}) into {output}", markup=False)


@app.command("prune")
def prune_cmd(
    model: Annotated[str, typer.Argument(help="Model asset ref or local model folder.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Pruned model asset name.")],
    method: Annotated[
        str,
        typer.Option(
            help="magnitude | wanda (unstructured), layers | heads | channels (structured)."
        ),
    ],
    sparsity: Annotated[
        float | None, typer.Option(help="Fraction of each row zeroed (magnitude, wanda).")
    ] = None,
    drop: Annotated[
        int | None, typer.Option(help="Decoder layers to remove (layers; channels: first).")
    ] = None,
    keep_kv_heads: Annotated[
        int | None, typer.Option(help="Key/value head groups kept per layer (heads).")
    ] = None,
    keep_ratio: Annotated[
        float | None, typer.Option(help="Fraction of MLP neurons kept per layer (channels).")
    ] = None,
    reconstruct: Annotated[
        bool, typer.Option(help="channels: refit down_proj on the kept neurons (least squares).")
    ] = True,
    calibration: Annotated[
        str | None, typer.Option(help="Dataset ref or local text/rows for activations.")
    ] = None,
    samples: Annotated[int, typer.Option(help="Calibration blocks.")] = 32,
    seq_len: Annotated[int, typer.Option(help="Tokens per calibration block.")] = 256,
    json_: JsonOpt = False,
) -> None:
    """Prune a model (Wanda or magnitude sparsity, or drop layers / heads / MLP channels)."""
    from lmops.core.yamlcfg import validate_config
    from lmops.deploy.prune import PruneSpec, prune

    spec = validate_config(
        {
            "model": model,
            "output": output,
            "method": method,
            "sparsity": sparsity,
            "drop": drop,
            "keep_kv_heads": keep_kv_heads,
            "keep_ratio": keep_ratio,
            "reconstruct": reconstruct,
            "calibration": calibration,
            "samples": samples,
            "seq_len": seq_len,
        },
        PruneSpec,
        source="lmops deploy prune",
    )
    r = prune(spec)
    if json_:
        print_json(r)
        return
    extra = f", {100 * r.sparsity:.1f} % zeros" if r.sparsity else ""
    extra += f", dropped layers {r.dropped}" if r.dropped else ""
    extra += f", MLP width {r.intermediate_size}" if r.intermediate_size else ""
    console.print(
        f"{r.ref}: {r.method}, {r.params_before:,} -> {r.params_after:,} parameters{extra}",
        markup=False,
    )


@app.command("distill")
def distill_cmd(
    teacher: Annotated[str, typer.Option(help="Teacher model ref or folder.")],
    student: Annotated[
        str, typer.Option(help="layers:N (teacher with N evenly spaced layers) or a model.")
    ],
    dataset: Annotated[str, typer.Option(help="Dataset ref or local text/rows.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Student model asset name.")],
    loss: Annotated[str, typer.Option(help="kl (forward KL) or jsd (generalized JSD).")] = "kl",
    temperature: Annotated[float, typer.Option(help="Softmax temperature.")] = 1.0,
    beta: Annotated[float, typer.Option(help="JSD weight of the teacher.")] = 0.5,
    top_k: Annotated[
        int | None, typer.Option(help="Cache the teacher's top-k logits per block.")
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 200,
    batch_size: Annotated[int, typer.Option(help="Blocks per step.")] = 4,
    seq_len: Annotated[int, typer.Option(help="Tokens per block.")] = 256,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 2e-4,
    warmup: Annotated[int, typer.Option(help="Warm-up steps before the cosine decay.")] = 10,
    eval_blocks: Annotated[int, typer.Option(help="Held-out blocks for perplexity.")] = 8,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 50,
    max_minutes: Annotated[
        float | None, typer.Option(help="Stop (checkpointed) after this long; register.")
    ] = None,
    max_cpu_minutes: Annotated[
        float | None,
        typer.Option(help="Stop after this much CPU time of training (all resumes); register."),
    ] = None,
    freeze_embeddings: Annotated[
        bool, typer.Option(help="Keep the embeddings and LM head fixed (faster steps).")
    ] = False,
    seed: Annotated[int, typer.Option()] = 0,
    json_: JsonOpt = False,
) -> None:
    """Distil a teacher into a smaller student on the teacher's logits; re-run to resume.

    Ctrl-C (or SIGTERM) stops after the current step, saves a checkpoint and prints the
    command that resumes it (a second Ctrl-C stops at once)."""
    from lmops.core.yamlcfg import validate_config
    from lmops.deploy.distill import DistillSpec, distill

    spec = validate_config(
        {
            "teacher": teacher,
            "student": student,
            "dataset": dataset,
            "output": output,
            "loss": loss,
            "temperature": temperature,
            "beta": beta,
            "top_k": top_k,
            "steps": steps,
            "batch_size": batch_size,
            "seq_len": seq_len,
            "lr": lr,
            "warmup": warmup,
            "eval_blocks": eval_blocks,
            "checkpoint_every": checkpoint_every,
            "max_minutes": max_minutes,
            "max_cpu_minutes": max_cpu_minutes,
            "freeze_embeddings": freeze_embeddings,
            "seed": seed,
        },
        DistillSpec,
        source="lmops deploy distill",
    )
    try:
        r = distill(spec, show_progress=not json_)
    except KeyboardInterrupt as e:  # as training does: keep the steps done, say how to go on
        _distill_interrupted(e, spec)
    if json_:
        print_json(r)
        return
    resumed = f" (resumed at step {r.resumed_from})" if r.resumed_from else ""
    console.print(
        f"{r.ref}: {r.params_teacher:,} -> {r.params_student:,} parameters, {r.steps} steps"
        f"{resumed}; held-out perplexity teacher {r.teacher_ppl:.2f}, student "
        f"{r.student_ppl_start:.2f} -> {r.student_ppl_end:.2f} ({r.seconds:.0f} s, "
        f"{r.cpu_seconds:.0f} CPU-s of training, stopped by {r.stopped_by})",
        markup=False,
    )


def _distill_interrupted(e: KeyboardInterrupt, spec: Any) -> NoReturn:
    """Print where a stopped distillation is and the command that resumes it (the same
    spec: its checkpoint folder is named by the spec's hash); exit 128 + signal."""
    import shlex
    import signal

    from lmops.cli._output import err_console
    from lmops.deploy.distill import DistillInterrupted, DistillSpec

    cmd = ["lmops", "deploy", "distill"]
    for name, value in spec.model_dump().items():
        field = DistillSpec.model_fields[name]
        if not field.is_required() and value == field.default:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            cmd.append(flag if value else f"--no-{flag[2:]}")
        else:
            cmd += [flag, str(value)]
    again = shlex.join(cmd)
    signum = getattr(e, "signum", signal.SIGINT)
    if not isinstance(e, DistillInterrupted):  # while loading, or after the last step
        line = f"interrupted; the same command resumes from the last checkpoint, if any: {again}"
    elif e.checkpoint is None:
        line = (
            f"interrupted after step {e.step} of {e.steps}, before any checkpoint was written;"
            f" start it again with: {again}"
        )
    else:
        saved = "checkpoint saved" if e.saved else "last checkpoint"
        line = (
            f"interrupted after step {e.step} of {e.steps}; {saved}: {e.checkpoint}; "
            f"resume with: {again}"
        )
    err_console.print(line, markup=False, soft_wrap=True)
    raise typer.Exit(128 + int(signum))
