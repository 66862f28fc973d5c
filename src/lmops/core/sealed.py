"""Sealed packages: one file holding a model folder, its manifest, an Ed25519 signature and
(optionally) AES-256-GCM encryption. Below the stages: ``deploy`` writes packages and
``serve`` (through ``lmops.models.sealed``) reads them, without importing each other.

The file, little-endian::

    b"LMOPSPK1"                      magic + format version (8 bytes)
    body                             every file in manifest order, cut into chunks; a chunk is
                                     AES-GCM(ciphertext || 16-byte tag), or the plain bytes
    header                           UTF-8 JSON: files (path, size, sha256, chunks), chunk
                                     size, body size and sha256, encryption, signer, metadata
    signature                        64 bytes of Ed25519 over magic + header bytes (or none)
    u32 signature length, u64 header length
    b"LMOPSEND"                      end marker: a truncated file has none

Why each piece:

- The signature covers the exact header bytes (not a re-serialisation), and the header names
  the body's sha256, so one changed byte anywhere fails :func:`read_header` or the body check,
  even without the decryption key (``lmops deploy verify`` needs only the public key).
- Each package has a fresh random 256-bit data key, wrapped (AES-GCM) by the key-encryption
  key (KEK) that :func:`generate_keys` writes; the header names the KEK's id, so a wrong key
  is named as such. Because the data key is never reused, a chunk's nonce is its position
  (file index, chunk index); the associated data adds the package id and a last-chunk flag,
  so chunks cannot be moved between files or packages, reordered, or cut off at a boundary.
- Every file's plaintext sha256 is checked again after decryption (:meth:`Package.read`).
- A valid signature only says *some* key signed: anyone can make a key. Whoever uses a
  package (serve, unpack) also needs the signer to be a *trusted* key: the one pinned
  (``--pubkey``, ``public_key:``) or one in the trust store ``$LMOPS_HOME/trusted-keys/*.pub``
  (:func:`load_trusted_keys`; ``lmops deploy keygen`` adds its own, ``lmops deploy trust`` others).
  Checking the signer needs the header only, so it costs microseconds whatever the size.

Errors are :class:`~lmops.core.errors.UserError` with one line naming the file and what to
do; nothing here prints.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import struct
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from lmops.core.errors import UserError

__all__ = [
    "DEFAULT_CHUNK",
    "KEK_ENV",
    "Keys",
    "Package",
    "generate_keys",
    "is_package",
    "load_kek",
    "load_public_key",
    "load_signing_key",
    "load_trusted_keys",
    "open_package",
    "trust_key",
    "trust_store",
    "untrusted",
    "write_package",
]

MAGIC = b"LMOPSPK1"
END = b"LMOPSEND"
TAG = 16  # AES-GCM tag bytes per chunk
DEFAULT_CHUNK = 4 << 20  # 4 MiB: large enough that per-call overhead vanishes, small in memory
KEK_ENV = "LMOPS_KEK"  # base64 (or hex) of a 32-byte key-encryption key
_TRAILER = struct.Struct("<IQ")  # signature length, header length
_SIG_CONTEXT = b"lmops-package-signature\n"
_AD_CONTEXT = b"lmops-package-chunk"
_WRAP_AD = b"lmops-package-data-key"
_MAX_HEADER = 64 << 20


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: str, what: str) -> bytes:
    try:
        return base64.b64decode(s.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise UserError(f"{what} is not valid base64") from None


def kek_id(kek: bytes) -> str:
    """A short public name of a KEK (a hash: it reveals nothing usable of a random key)."""
    return "kek-" + hashlib.sha256(b"lmops-kek-id" + kek).hexdigest()[:16]


def key_id(public_key: bytes) -> str:
    return "ed25519-" + hashlib.sha256(public_key).hexdigest()[:16]


# -- keys -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Keys:
    """What ``lmops deploy keygen`` wrote: the secret file and its public twin."""

    path: Path
    public_path: Path
    kek_id: str
    key_id: str


def generate_keys(output: Path) -> Keys:
    """Write a key file (mode 0600: a 32-byte KEK and an Ed25519 signing key) to ``output``
    and the public key to ``output.pub``. Refuses to overwrite an existing key file: losing
    a KEK makes every package sealed with it unreadable."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    output = Path(output)
    pub_path = output.with_name(output.name + ".pub")
    for p in (output, pub_path):
        if p.exists():
            raise UserError(f"{p} exists; keygen never overwrites keys (choose another --output)")
    kek = secrets.token_bytes(32)
    sk = Ed25519PrivateKey.generate()
    raw_sk = sk.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    pk = sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    secret = {
        "lmops": "keys",
        "kek": _b64(kek),
        "kek_id": kek_id(kek),
        "signing_key": _b64(raw_sk),
        "public_key": _b64(pk),
        "key_id": key_id(pk),
    }
    public = {"lmops": "public-key", "public_key": _b64(pk), "key_id": key_id(pk)}
    output.parent.mkdir(parents=True, exist_ok=True)
    # created 0600 from the start (never world-readable, not even for a moment)
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(secret, fh, indent=1)
        fh.write("\n")
    pub_path.write_text(json.dumps(public, indent=1) + "\n", encoding="utf-8")
    return Keys(output, pub_path, secret["kek_id"], secret["key_id"])


def _key_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        raise UserError(f"{path}: no such key file (lmops deploy keygen --output FILE)") from None
    except IsADirectoryError:
        raise UserError(
            f"{path} is a folder, not a key file (give the file lmops deploy keygen wrote, "
            "or its .pub)"
        ) from None
    except OSError as e:  # unreadable: permissions, I/O; same one line as a missing file
        raise UserError(
            f"{path}: cannot read the key file ({e.strerror or type(e).__name__}); "
            "check its permissions"
        ) from None
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path}: not a key file written by lmops deploy keygen") from None
    if not isinstance(data, dict) or data.get("lmops") not in ("keys", "public-key"):
        raise UserError(f"{path}: not a key file written by lmops deploy keygen")
    return data


def load_kek(key_file: Path | None = None, *, option: str = "--key-file") -> bytes:
    """The KEK from ``key_file``, else from ``$LMOPS_KEK`` (base64 or hex of 32 bytes).
    ``option`` is how the caller's command names the key file, for the message when
    neither is there (``lmops deploy package`` calls it ``--kek-file``)."""
    if key_file is not None:
        data = _key_file(key_file)
        if "kek" not in data:
            raise UserError(f"{key_file}: holds no key-encryption key (it is a public key file)")
        kek = _unb64(data["kek"], f"{key_file}: kek")
    else:
        raw = os.environ.get(KEK_ENV, "").strip()
        if not raw:
            raise UserError(
                f"no key-encryption key: give {option} FILE or set {KEK_ENV} "
                "(lmops deploy keygen writes one)"
            )
        try:
            kek = bytes.fromhex(raw) if len(raw) == 64 else base64.b64decode(raw, validate=True)
        except ValueError:
            raise UserError(f"{KEK_ENV}: not base64 or hex of a 32-byte key") from None
    if len(kek) != 32:
        raise UserError(f"{key_file or KEK_ENV}: the key-encryption key must be 32 bytes")
    return kek


def load_signing_key(key_file: Path) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _key_file(key_file)
    if "signing_key" not in data:
        raise UserError(f"{key_file}: holds no signing key (give the key file, not the .pub)")
    return Ed25519PrivateKey.from_private_bytes(_unb64(data["signing_key"], f"{key_file}"))


def load_public_key(key_file: Path) -> bytes:
    """The raw Ed25519 public key of a key file or its ``.pub``."""
    data = _key_file(key_file)
    pk = _unb64(str(data.get("public_key", "")), f"{key_file}: public_key")
    if len(pk) != 32:
        raise UserError(f"{key_file}: public_key is not an Ed25519 key")
    return pk


# -- trust ------------------------------------------------------------------------------------------
def trust_store(home: Path | None = None) -> Path:
    """The folder of trusted signers' public keys: ``$LMOPS_HOME/trusted-keys``."""
    if home is None:
        from lmops.core.config import Settings

        home = Settings.from_env().home
    return Path(home) / "trusted-keys"


def load_trusted_keys(*, home: Path | None = None) -> list[bytes]:
    """The public keys of :func:`trust_store` (each ``*.pub`` in it; none: an empty list,
    which trusts nobody). A file there that is not a public key is an error naming it."""
    return [load_public_key(f) for f in sorted(trust_store(home).glob("*.pub"))]


def trust_key(key_file: Path, *, home: Path | None = None) -> Path:
    """Add the public key of ``key_file`` (a key file or its ``.pub``; only the public
    half is copied) to the trust store as ``<key id>.pub``; returns that file."""
    pk = load_public_key(Path(key_file))
    folder = trust_store(home)
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / f"{key_id(pk)}.pub"
    public = {"lmops": "public-key", "public_key": _b64(pk), "key_id": key_id(pk)}
    tmp = folder / f".{dest.name}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(public, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, dest)  # a reader never sees half a key
    return dest


def untrusted(path: Path, signed_by: str, *, home: Path | None = None) -> str:
    """One line: ``path`` is signed by ``signed_by``, which no trusted key matches."""
    return (
        f"{path}: signed by {signed_by}, which is not a trusted key (none pinned with --pubkey "
        f"or public_key:, none in {trust_store(home)} matches); anyone can sign, so the "
        "signature proves nothing yet: give the signer's .pub with --pubkey, or trust it "
        "with `lmops deploy trust FILE.pub`"
    )


# -- writing ----------------------------------------------------------------------------------------
def _nonce(file_index: int, chunk_index: int) -> bytes:
    return struct.pack(">IQ", file_index, chunk_index)


def _ad(package_id: bytes, file_index: int, chunk_index: int, last: bool) -> bytes:
    return _AD_CONTEXT + package_id + struct.pack(">IQB", file_index, chunk_index, int(last))


def _chunks(size: int, chunk: int) -> int:
    # an empty file still has one (empty, last) chunk, so cutting it off is detected too
    return max(1, -(-size // chunk))


def _folder_files(src: Path) -> list[tuple[str, Path]]:
    if src.is_file():
        return [(src.name, src)]
    files = sorted(
        (p.relative_to(src).as_posix(), p)
        for p in src.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(src).parts)
    )
    if not files:
        raise UserError(f"{src}: no files to package")
    return files


def write_package(
    src: Path,
    out: Path,
    *,
    signing_key: Any | None = None,
    kek: bytes | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    metadata: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Seal the folder (or file) ``src`` into the one file ``out``, written to a temp
    file beside it and renamed, so a failure leaves nothing. Encrypted when ``kek`` is
    given, signed when ``signing_key`` (an Ed25519 private key) is. ``progress`` gets the
    bytes done. Returns the header."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not (1 << 16) <= chunk_size <= (64 << 20):
        raise UserError("chunk size must be between 64 KiB and 64 MiB")
    files = _folder_files(Path(src))
    package_id = secrets.token_bytes(16)
    encryption: dict[str, Any] | None = None
    aead: AESGCM | None = None
    if kek is not None:
        data_key = AESGCM.generate_key(bit_length=256)
        wrap_nonce = secrets.token_bytes(12)
        wrapped = AESGCM(kek).encrypt(wrap_nonce, data_key, _WRAP_AD + package_id)
        encryption = {
            "cipher": "AES-256-GCM",
            "kek_id": kek_id(kek),
            "wrap_nonce": _b64(wrap_nonce),
            "wrapped_key": _b64(wrapped),
        }
        aead = AESGCM(data_key)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    body = hashlib.sha256()
    entries: list[dict[str, Any]] = []
    offset = len(MAGIC)
    try:
        with open(tmp, "wb") as fh:
            fh.write(MAGIC)
            for fi, (name, path) in enumerate(files):
                size = path.stat().st_size
                n = _chunks(size, chunk_size)
                digest = hashlib.sha256()
                start = offset
                with open(path, "rb") as src_fh:
                    for ci in range(n):
                        plain = src_fh.read(chunk_size)
                        digest.update(plain)
                        if aead is not None:
                            piece = aead.encrypt(
                                _nonce(fi, ci), plain, _ad(package_id, fi, ci, ci == n - 1)
                            )
                        else:
                            piece = plain
                        body.update(piece)
                        fh.write(piece)
                        offset += len(piece)
                        if progress is not None:
                            progress(len(plain))
                    if src_fh.read(1):
                        raise UserError(f"{path} grew while it was packaged; package it again")
                entries.append(
                    {
                        "path": name,
                        "size": size,
                        "sha256": digest.hexdigest(),
                        "chunks": n,
                        "offset": start,
                        "stored": offset - start,
                    }
                )
            header: dict[str, Any] = {
                "format": 1,
                "package_id": package_id.hex(),
                "chunk_size": chunk_size,
                "files": entries,
                "body_size": offset - len(MAGIC),
                "body_sha256": body.hexdigest(),
                "encryption": encryption,
                "signer": None,
                "metadata": metadata or {},
            }
            if signing_key is not None:
                from cryptography.hazmat.primitives import serialization

                pk = signing_key.public_key().public_bytes(
                    serialization.Encoding.Raw, serialization.PublicFormat.Raw
                )
                header["signer"] = {
                    "algorithm": "Ed25519",
                    "public_key": _b64(pk),
                    "key_id": key_id(pk),
                }
            raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
            sig = signing_key.sign(_SIG_CONTEXT + MAGIC + raw) if signing_key is not None else b""
            fh.write(raw)
            fh.write(sig)
            fh.write(_TRAILER.pack(len(sig), len(raw)))
            fh.write(END)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return header


# -- reading ----------------------------------------------------------------------------------------
def is_package(path: Path) -> bool:
    """Whether ``path`` is a file that starts like a package (cheap: reads 8 bytes)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except (IsADirectoryError, FileNotFoundError, PermissionError, NotADirectoryError):
        return False


@dataclass
class Package:
    """An opened package whose header and signature have been checked. Read files with
    :meth:`read` (each checked against its manifest digest)."""

    path: Path
    header: dict[str, Any]
    signed_by: str | None
    trusted: bool = False  # the signer is a key the caller named as trusted
    _aead: Any = field(default=None, repr=False)

    @property
    def files(self) -> list[dict[str, Any]]:
        return list(self.header["files"])

    @property
    def encrypted(self) -> bool:
        return self.header.get("encryption") is not None

    def check_body(self, progress: Callable[[int], None] | None = None) -> None:
        """Re-hash the stored body against the signed digest (no key needed)."""
        h = hashlib.sha256()
        left = int(self.header["body_size"])
        with open(self.path, "rb") as fh:
            fh.seek(len(MAGIC))
            while left > 0:
                buf = fh.read(min(left, 8 << 20))
                if not buf:
                    break
                h.update(buf)
                left -= len(buf)
                if progress is not None:
                    progress(len(buf))
        if left or h.hexdigest() != self.header["body_sha256"]:
            raise UserError(
                f"{self.path}: package contents changed after it was sealed (body digest "
                "mismatch); do not use it, fetch or build the package again"
            )

    def iter_chunks(self, name: str) -> Iterator[bytes]:
        """The plaintext of file ``name``, chunk by chunk, each authenticated; after the
        last chunk the whole file's sha256 is checked (so consume it to the end)."""
        entry = next((f for f in self.header["files"] if f["path"] == name), None)
        if entry is None:
            raise UserError(f"{self.path}: the package holds no file {name!r}")
        if self.encrypted and self._aead is None:
            raise UserError(
                f"{self.path}: the package is encrypted; give its key (--key-file FILE or "
                f"{KEK_ENV})"
            )
        fi = self.header["files"].index(entry)
        chunk = int(self.header["chunk_size"])
        n = int(entry["chunks"])
        digest = hashlib.sha256()
        pid = bytes.fromhex(self.header["package_id"])
        with open(self.path, "rb") as fh:
            fh.seek(int(entry["offset"]))
            left = int(entry["size"])
            for ci in range(n):
                plain_len = min(chunk, left)
                stored = plain_len + (TAG if self._aead is not None else 0)
                piece = fh.read(stored)
                if len(piece) != stored:
                    raise UserError(f"{self.path}: truncated inside {name}; fetch it again")
                if self._aead is not None:
                    from cryptography.exceptions import InvalidTag

                    try:
                        piece = self._aead.decrypt(
                            _nonce(fi, ci), piece, _ad(pid, fi, ci, ci == n - 1)
                        )
                    except InvalidTag:
                        raise UserError(
                            f"{self.path}: chunk {ci} of {name} fails authentication (changed, "
                            "moved or cut off); do not use this package, fetch it again"
                        ) from None
                digest.update(piece)
                left -= len(piece)
                yield piece
        if left or digest.hexdigest() != entry["sha256"]:
            raise UserError(
                f"{self.path}: {name} does not match its manifest digest; do not use this "
                "package, fetch it again"
            )

    def read(self, name: str) -> bytes:
        """The whole plaintext of file ``name``, checked."""
        return b"".join(self.iter_chunks(name))

    def extract(self, out: Path, progress: Callable[[int], None] | None = None) -> None:
        """Write every file under ``out`` (which must not exist): into a temp folder
        beside it, renamed once every file has been checked."""
        import shutil

        out = Path(out)
        if out.exists():
            raise UserError(f"{out} exists; unpack into a new folder")
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            for entry in self.header["files"]:
                dest = tmp / entry["path"]
                if ".." in Path(entry["path"]).parts or Path(entry["path"]).is_absolute():
                    raise UserError(f"{self.path}: file name {entry['path']!r} escapes the folder")
                dest.parent.mkdir(parents=True, exist_ok=True)
                with open(dest, "wb") as fh:
                    for piece in self.iter_chunks(entry["path"]):
                        fh.write(piece)
                        if progress is not None:
                            progress(len(piece))
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _damaged(path: Path, what: str) -> UserError:
    return UserError(
        f"{path}: {what}; it is not a complete lmops package (fetch or build it again)"
    )


def read_header(path: Path) -> tuple[dict[str, Any], bytes, bytes]:
    """(header, its exact bytes, signature bytes) from the trailer; one-line errors."""
    path = Path(path)
    try:
        size = path.stat().st_size
        fh: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise UserError(f"{path}: no such package file") from None
    except IsADirectoryError:
        raise UserError(
            f"{path} is a folder; a package is one file (lmops deploy package)"
        ) from None
    with fh:
        if fh.read(len(MAGIC)) != MAGIC:
            raise UserError(f"{path}: not an lmops package (no LMOPSPK1 marker at the start)")
        tail = len(END) + _TRAILER.size
        if size < len(MAGIC) + tail:
            raise _damaged(path, "truncated")
        fh.seek(size - tail)
        trailer = fh.read(tail)
        if trailer[_TRAILER.size :] != END:
            raise _damaged(path, "truncated or damaged (no end marker)")
        sig_len, head_len = _TRAILER.unpack(trailer[: _TRAILER.size])
        if sig_len not in (0, 64) or head_len > _MAX_HEADER or head_len + sig_len + tail > size:
            raise _damaged(path, "damaged trailer")
        fh.seek(size - tail - sig_len - head_len)
        raw = fh.read(head_len)
        sig = fh.read(sig_len)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict) or header.get("format") != 1:
            raise ValueError
        body_end = len(MAGIC) + int(header["body_size"])
        ok = body_end == size - tail - sig_len - head_len
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise _damaged(path, "damaged header") from None
    if not ok:
        raise _damaged(path, "body size does not match its header")
    return header, raw, sig


def open_package(
    path: Path,
    *,
    kek: bytes | None = None,
    trusted_key: bytes | None = None,
    trusted_keys: Collection[bytes] | None = None,
    require_trust: bool = True,
    allow_unsigned: bool = False,
    unsigned_fix: str = (
        "re-package with --sign KEY, or pass --allow-unsigned if you trust where it came from"
    ),
) -> Package:
    """Open ``path``: read the header, check the signature, and unwrap the data key with
    ``kek`` when the package is encrypted and a key is given. An unsigned package is
    refused unless ``allow_unsigned``. The body is not read here:
    :meth:`Package.check_body` and :meth:`Package.iter_chunks` check it.

    Trust (:attr:`Package.trusted`): the signer is ``trusted_key`` when one is pinned (any
    other signer is refused), else one of ``trusted_keys`` (default: the trust store's,
    :func:`load_trusted_keys`). An untrusted signer is refused (:func:`untrusted`) unless
    ``require_trust`` is false, where the caller decides (``lmops deploy verify``).
    ``unsigned_fix`` is what the refusal of an unsigned package tells the user to do, in the
    caller's own options (``lmops serve`` has no ``--allow-unsigned``)."""
    from cryptography.exceptions import InvalidSignature, InvalidTag
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    path = Path(path)
    header, raw, sig = read_header(path)
    signer = header.get("signer")
    signed_by: str | None = None
    trusted = False
    if not sig or not signer:
        if sig or signer:
            raise _damaged(path, "signature and signer do not go together")
        if not allow_unsigned:
            raise UserError(f"{path}: the package is not signed; refusing it ({unsigned_fix})")
    else:
        pk = _unb64(str(signer.get("public_key", "")), f"{path}: signer public key")
        if trusted_key is not None and pk != trusted_key:
            raise UserError(
                f"{path}: signed by {key_id(pk) if len(pk) == 32 else 'an unknown key'}, not by "
                f"the trusted key {key_id(trusted_key)}; do not use it"
            )
        try:
            Ed25519PublicKey.from_public_bytes(pk).verify(sig, _SIG_CONTEXT + MAGIC + raw)
        except (InvalidSignature, ValueError):
            raise UserError(
                f"{path}: the signature does not match (the package was changed after signing "
                "or signed by another key); do not use it"
            ) from None
        signed_by = key_id(pk)
        if trusted_key is not None:
            trusted = True  # checked against the pin above
        else:
            trusted = pk in (trusted_keys if trusted_keys is not None else load_trusted_keys())
        if require_trust and not trusted:
            raise UserError(untrusted(path, signed_by))
    pkg = Package(path, header, signed_by, trusted=trusted)
    enc = header.get("encryption")
    if enc is not None and kek is not None:
        if enc.get("kek_id") != kek_id(kek):
            raise UserError(
                f"{path}: sealed with key {enc.get('kek_id')}, but the key given is "
                f"{kek_id(kek)}; use the key file the package was made with"
            )
        try:
            data_key = AESGCM(kek).decrypt(
                _unb64(enc["wrap_nonce"], f"{path}: wrap_nonce"),
                _unb64(enc["wrapped_key"], f"{path}: wrapped_key"),
                _WRAP_AD + bytes.fromhex(header["package_id"]),
            )
        except (InvalidTag, ValueError, KeyError):
            raise UserError(
                f"{path}: the key does not unwrap this package's data key (wrong key or a "
                "damaged package); use the key file the package was made with"
            ) from None
        pkg._aead = AESGCM(data_key)
    return pkg
