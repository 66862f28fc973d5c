"""Sealed packages (issue #15 item 6): sign + encrypt and verify a ~540 MB model, and tamper
detection over single-byte flips.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/package_bench.py [--mb 540] [--flips 2000] [--json]

The model is synthesised: a safetensors file of random float32 tensors (``--mb`` MB) beside
a config and tokenizer-sized JSON, as SmolLM2-135M's fp32 folder is ~540 MB. Figures:

- ``package_s``: write the package (sha256 of every file, AES-256-GCM in 4 MiB chunks, the
  Ed25519 signature), and its throughput in MiB/s (the goal is >= 100 MiB/s, <= 5 s);
- ``verify_s``: signature + body digest (no key), and ``verify_decrypt_s``: also every chunk
  decrypted and every file's digest checked (what serve and unpack do), both <= 5 s;
- ``tamper``: single-byte flips at random positions (plus every byte of the first and last
  256), each checked with the key; the goal is 100 % detected.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from lmops.core.errors import UserError
from lmops.core.sealed import (
    generate_keys,
    load_kek,
    load_public_key,
    load_signing_key,
    open_package,
    write_package,
)


def synth_model(folder: Path, mb: int) -> Path:
    """A model-like folder: ``model.safetensors`` of ~``mb`` MB random fp32, config, tokenizer."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    per = 16 << 20  # 16 MB tensors
    n = max(1, (mb << 20) // per)
    tensors = {f"layer.{i}.weight": torch.randn(per // 4, generator=g) for i in range(n)}
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 576}))
    vocab = {f"tok{i}": i for i in range(49152)}
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab}}))
    return folder


def _check_all(path: Path, kek: bytes, pub: bytes) -> None:
    pkg = open_package(path, kek=kek, trusted_key=pub)  # the signer pinned, as serve does
    pkg.check_body()
    for f in pkg.files:
        for _ in pkg.iter_chunks(f["path"]):
            pass


def tamper(path: Path, kek: bytes, pub: bytes, flips: int, seed: int = 0) -> dict[str, Any]:
    """Flip one bit of one byte at a time in a copy; count how many opens+checks refuse.

    The copy is patched in place and restored (one write each), so each try costs a full
    check of the package."""
    rng = random.Random(seed)
    size = path.stat().st_size
    positions = sorted(
        set(range(256))
        | set(range(size - 256, size))
        | {rng.randrange(size) for _ in range(max(0, flips - 512))}
    )
    detected = 0
    with open(path, "r+b") as fh:
        for pos in positions:
            fh.seek(pos)
            orig = fh.read(1)
            fh.seek(pos)
            fh.write(bytes([orig[0] ^ (1 << rng.randrange(8))]))
            fh.flush()
            try:
                _check_all(path, kek, pub)
            except UserError:
                detected += 1
            fh.seek(pos)
            fh.write(orig)
            fh.flush()
    return {"tried": len(positions), "detected": detected, "rate": detected / len(positions)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=540, help="size of the synthetic model (MB)")
    ap.add_argument("--flips", type=int, default=600, help="single-byte flips to try")
    ap.add_argument("--tamper-mb", type=int, default=8, help="model size for the flip trials")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="package-bench-") as tmp:
        root = Path(tmp)
        keys = generate_keys(root / "keys.json").path
        kek, sk, pub = load_kek(keys), load_signing_key(keys), load_public_key(keys)
        model = synth_model(root / "model", args.mb)
        model_bytes = sum(p.stat().st_size for p in model.iterdir())
        pkg = root / "model.lmpkg"
        t = time.perf_counter()
        write_package(model, pkg, signing_key=sk, kek=kek)
        package_s = time.perf_counter() - t
        t = time.perf_counter()
        p = open_package(pkg, trusted_key=pub)
        p.check_body()
        verify_s = time.perf_counter() - t
        t = time.perf_counter()
        _check_all(pkg, kek, pub)
        verify_decrypt_s = time.perf_counter() - t
        os.unlink(pkg)
        small = synth_model(root / "small", args.tamper_mb)
        spkg = root / "small.lmpkg"
        write_package(small, spkg, signing_key=sk, kek=kek, chunk_size=1 << 20)
        flips = tamper(spkg, kek, pub, args.flips)
    mib = model_bytes / (1 << 20)
    out = {
        "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
        "model_mb": round(model_bytes / 1e6, 1),
        "package_s": round(package_s, 2),
        "package_mib_s": round(mib / package_s, 1),
        "verify_s": round(verify_s, 2),
        "verify_decrypt_s": round(verify_decrypt_s, 2),
        "decrypt_mib_s": round(mib / verify_decrypt_s, 1),
        "tamper": flips,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"model {out['model_mb']} MB (synthetic safetensors), OMP_NUM_THREADS={out['threads']}")
    print(
        f"package (sha256 + AES-256-GCM + Ed25519): {package_s:.2f} s, {mib / package_s:.0f} MiB/s"
    )
    print(f"verify (signature + body digest):        {verify_s:.2f} s")
    print(
        f"verify + decrypt every file + digests:   {verify_decrypt_s:.2f} s, {out['decrypt_mib_s']} MiB/s"
    )
    print(
        f"tamper: {flips['detected']}/{flips['tried']} single-byte flips detected "
        f"({100 * flips['rate']:.1f} %) on a {args.tamper_mb} MB package"
    )


if __name__ == "__main__":
    main()
