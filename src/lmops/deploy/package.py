"""Signed and encrypted model packages: ``lmops deploy keygen / package / verify / unpack``.

A package is one file (format in :mod:`lmops.core.sealed`): every file of a model folder,
a manifest of their sizes and sha256, an Ed25519 signature over the manifest, and
AES-256-GCM encryption under a fresh data key wrapped by a key-encryption key (KEK).
:func:`package_model` registers it as a ``package`` asset linked to the model version;
``lmops serve --model NAME=PACKAGE --key-file KEYS`` serves it from memory
(:mod:`lmops.models.sealed`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lmops.core.errors import UserError
from lmops.core.sealed import (
    DEFAULT_CHUNK,
    Keys,
    generate_keys,
    load_kek,
    load_public_key,
    load_signing_key,
    open_package,
    trust_key,
    write_package,
)

__all__ = [
    "PackageResult",
    "VerifyResult",
    "keygen",
    "package_model",
    "trust",
    "unpack_package",
    "verify_package",
]


class PackageResult(BaseModel):
    ref: str
    path: str
    size: int
    files: int
    signed_by: str | None
    kek_id: str | None
    seconds: float


class VerifyResult(BaseModel):
    """What ``verify`` established: ``files_checked`` is true when every file was also
    checked against its digest, ``decrypted`` when that took decrypting them (an encrypted
    package and a key; never for a package that is not encrypted); ``trusted`` when the signer
    is the pinned ``--pubkey`` or a key of the trust store (else the signature only says
    that someone signed it: anyone can make a key)."""

    path: str
    ref: str | None
    signed_by: str | None
    trusted: bool
    encrypted: bool
    decrypted: bool
    files_checked: bool = False
    files: int
    size: int
    metadata: dict[str, Any]


def keygen(output: Path, *, trust_it: bool = True) -> tuple[Keys, Path | None]:
    """Write a key file (KEK + Ed25519 signing key, mode 0600) and ``OUTPUT.pub``, and
    (``trust_it``) add the public key to this home's trust store, so packages signed with
    it are served here without ``--pubkey``. Returns the keys and the trusted copy."""
    keys = generate_keys(Path(output))
    return keys, trust_key(keys.public_path) if trust_it else None


def trust(key_file: Path) -> Path:
    """Add the public key of ``key_file`` (a ``.pub``, or a key file: only its public half
    is copied) to ``$LMOPS_HOME/trusted-keys``; returns the file written there."""
    return trust_key(Path(key_file))


def _open_store(store: Any | None) -> Any:
    if store is not None:
        return store
    from lmops.store import Store

    return Store(origin="cli")


def package_model(
    model: str,
    *,
    output: str,
    sign: Path | None = None,
    encrypt: bool = False,
    kek_file: Path | None = None,
    chunk_mib: int = DEFAULT_CHUNK >> 20,
    store: Any | None = None,
    show_progress: bool = False,
) -> PackageResult:
    """Seal ``model`` (an asset ref or a local model folder) into one package file and
    register it as the ``package`` asset ``output`` with lineage to the model. ``sign``
    is a key file from :func:`keygen`; with ``encrypt`` the KEK comes from ``kek_file``
    (else ``$LMOPS_KEK``). Keys are checked before any byte is written."""
    from lmops.core.progress import Progress
    from lmops.deploy._source import check_output
    from lmops.models.loading import merged_view, resolve_local

    store = _open_store(store)
    check_output(store, output, "package")
    if not 1 <= chunk_mib <= 4:
        raise UserError("--chunk-mib: chunks are 1 to 4 MiB")
    if not sign and not encrypt:
        raise UserError("nothing to do: give --sign KEY and/or --encrypt")
    if kek_file and not encrypt:
        # the KEK would be ignored and the package written in plaintext: the user meant
        # to encrypt, or gave a key that does nothing
        raise UserError(
            f"--kek-file {kek_file} without --encrypt: the package would not be encrypted; "
            "add --encrypt, or drop --kek-file"
        )
    signing_key = load_signing_key(Path(sign)) if sign else None
    kek = load_kek(Path(kek_file) if kek_file else None, option="--kek-file") if encrypt else None
    path, version = resolve_local(model, store, kind="model")
    cfg = {"model": model, "signed": bool(sign), "encrypted": encrypt, "chunk_mib": chunk_mib}
    with store.runs.track("package", name=output, config=cfg) as run:
        inputs = [(version, "model")] if version else []
        if version is None:
            inputs = store.assets.record_inputs([(path, "model")], run_id=run.id)
        if (path / "adapter_config.json").exists():
            path = merged_view(path, store)  # a package is a whole model, served as one
        total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        out = Path(store.runs.dir(run.id)) / f"{output}.lmpkg"
        out.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            with Progress(total, label="package", unit="bytes", enabled=show_progress) as bar:
                header = write_package(
                    path,
                    out,
                    signing_key=signing_key,
                    kek=kek,
                    chunk_size=chunk_mib << 20,
                    metadata={"model": version or str(path), "name": output},
                    progress=bar.advance,
                )
            seconds = time.perf_counter() - start
            v = store.assets.register(
                "package",
                output,
                out,
                metadata={
                    "model": version or str(path),
                    "files": len(header["files"]),
                    "model_bytes": total,
                    "signed_by": (header["signer"] or {}).get("key_id"),
                    "kek_id": (header["encryption"] or {}).get("kek_id"),
                    "cipher": (header["encryption"] or {}).get("cipher"),
                    "package_id": header["package_id"],
                },
                inputs=inputs,
                run_id=run.id,
            )
        finally:
            out.unlink(missing_ok=True)  # the store holds the registered copy
        size = Path(store.assets.path(v.ref)).stat().st_size
        store.runs.log_metrics(run.id, {"seconds": seconds, "bytes": float(size)}, 0)
    return PackageResult(
        ref=v.ref,
        path=str(store.assets.path(v.ref)),
        size=size,
        files=len(header["files"]),
        signed_by=(header["signer"] or {}).get("key_id"),
        kek_id=(header["encryption"] or {}).get("kek_id"),
        seconds=round(seconds, 3),
    )


def _package_file(package: str, store: Any | None) -> tuple[Path, str | None]:
    p = Path(package).expanduser()
    if p.exists():
        return p, None
    from lmops.store import Store

    s = store if store is not None else Store(origin="cli")
    try:
        v = s.assets.resolve(package)
    except UserError:
        raise UserError(
            f"{package!r} is neither a package file nor a READY package asset"
        ) from None
    if v.kind != "package":
        raise UserError(f"{package!r} is a {v.kind}, not a package (lmops deploy package)")
    return Path(s.assets.path(v.ref)), v.ref


def _open(
    path: Path,
    *,
    key_file: Path | None,
    pubkey: Path | None,
    allow_unsigned: bool,
    need_key: bool,
    require_trust: bool,
) -> Any:
    import os

    from lmops.core.sealed import KEK_ENV

    pin = load_public_key(Path(pubkey)) if pubkey else None
    kek = None
    header = open_package(
        path, trusted_key=pin, require_trust=require_trust, allow_unsigned=allow_unsigned
    )
    if header.encrypted and (need_key or key_file is not None or os.environ.get(KEK_ENV)):
        kek = load_kek(Path(key_file) if key_file else None)
    if kek is None:
        return header
    return open_package(
        path, kek=kek, trusted_key=pin, require_trust=require_trust, allow_unsigned=allow_unsigned
    )


def verify_package(
    package: str,
    *,
    pubkey: Path | None = None,
    key_file: Path | None = None,
    allow_unsigned: bool = False,
    store: Any | None = None,
    show_progress: bool = False,
) -> VerifyResult:
    """Check a package (file or asset ref): signature (pinned to ``pubkey`` when given),
    the body against its signed digest and, when a key is at hand (``key_file`` or
    ``$LMOPS_KEK``) or the package is not encrypted, every file decrypted against its
    manifest digest. Any failure is a one-line ``UserError`` naming the file. A signer that
    is not trusted (no ``pubkey``, not in the trust store) is not a failure here: the
    result says ``trusted: false`` and the caller reports it (the CLI exits 3)."""
    from lmops.core.progress import Progress

    path, ref = _package_file(package, store)
    pkg = _open(
        path,
        key_file=key_file,
        pubkey=pubkey,
        allow_unsigned=allow_unsigned,
        need_key=False,
        require_trust=False,
    )
    total = int(pkg.header["body_size"])
    decrypt = not pkg.encrypted or pkg._aead is not None
    # one bar per pass, each counting the package's bytes once (one bar over both passes
    # showed "278M of 278M" for a 139M file)
    with Progress(total, label="verify digest", unit="bytes", enabled=show_progress) as bar:
        pkg.check_body(progress=bar.advance)
    if decrypt:
        size = sum(int(f["size"]) for f in pkg.files)
        with Progress(size, label="verify files", unit="bytes", enabled=show_progress) as bar:
            for f in pkg.files:
                for piece in pkg.iter_chunks(f["path"]):
                    bar.advance(len(piece))
    return VerifyResult(
        path=str(path),
        ref=ref,
        signed_by=pkg.signed_by,
        trusted=pkg.trusted,
        encrypted=pkg.encrypted,
        decrypted=decrypt and pkg.encrypted,
        files_checked=decrypt,
        files=len(pkg.files),
        size=sum(int(f["size"]) for f in pkg.files),
        metadata=dict(pkg.header.get("metadata") or {}),
    )


def unpack_package(
    package: str,
    output: Path,
    *,
    pubkey: Path | None = None,
    key_file: Path | None = None,
    allow_unsigned: bool = False,
    store: Any | None = None,
    show_progress: bool = False,
) -> VerifyResult:
    """Decrypt and write every file of a package into the new folder ``output`` (renamed
    into place only once every file has checked out). The signer must be trusted
    (``pubkey``, or a key of the trust store), as for serving: the plaintext is a model
    anyone could serve."""
    from lmops.core.progress import Progress

    if Path(output).exists():  # before the package is opened and checked (extract says it too)
        raise UserError(f"{output} exists; unpack into a new folder")
    path, ref = _package_file(package, store)
    pkg = _open(
        path,
        key_file=key_file,
        pubkey=pubkey,
        allow_unsigned=allow_unsigned,
        need_key=True,
        require_trust=True,
    )
    size = sum(int(f["size"]) for f in pkg.files)
    with Progress(size, label="unpack", unit="bytes", enabled=show_progress) as bar:
        pkg.extract(Path(output), progress=bar.advance)
    return VerifyResult(
        path=str(path),
        ref=ref,
        signed_by=pkg.signed_by,
        trusted=pkg.trusted,
        encrypted=pkg.encrypted,
        decrypted=pkg.encrypted,
        files_checked=True,
        files=len(pkg.files),
        size=size,
        metadata=dict(pkg.header.get("metadata") or {}),
    )
