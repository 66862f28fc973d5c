"""Signed, encrypted packages (issue #15 item 6): keygen -> package -> verify / unpack with
lineage to the model; every single-byte flip tried is refused (with and without the key);
wrong keys, truncation, a missing or foreign signature are one-line refusals; and
`lmops serve` answers from an encrypted package (decrypted in memory) exactly as from the
plain folder, through the official openai client."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from lmops.core.errors import UserError
from lmops.core.sealed import (
    generate_keys,
    load_kek,
    load_public_key,
    load_signing_key,
    open_package,
    write_package,
)
from tests.deploy.conftest import greedy_ids
from tests.serve.conftest import lmops_env, start_server, stop_server
from tests.train.tiny import make_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, tok_dir: Path) -> Path:
    return make_model(tmp_path_factory.mktemp("pkg") / "tiny", tok_dir, seed=3)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_keys(tmp_path_factory.mktemp("keys") / "keys.json").path


def _everything(path: Path, kek: bytes | None, pub: bytes) -> None:
    """Open (signer pinned to ``pub``), check the body and decrypt every file (what verify
    does with a key)."""
    pkg = open_package(path, kek=kek, trusted_key=pub)
    pkg.check_body()
    if kek is not None:
        for f in pkg.files:
            for _ in pkg.iter_chunks(f["path"]):
                pass


def test_package_verify_unpack_with_lineage(
    cli: Any, store: Any, tiny: Path, tmp_path: Path
) -> None:
    store.assets.register("model", "tiny", tiny)
    keyfile = tmp_path / "keys.json"
    r = cli("deploy", "keygen", "--output", str(keyfile), "--json")
    assert r.code == 0, r.err
    assert oct(keyfile.stat().st_mode & 0o777) == "0o600"
    assert cli("deploy", "keygen", "--output", str(keyfile)).code == 2  # never overwrites

    r = cli(
        "deploy", "package", "tiny", "--sign", str(keyfile), "--encrypt",
        "--kek-file", str(keyfile), "--chunk-mib", "1", "--output", "tiny-sealed", "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert out["ref"] == "tiny-sealed:1" and out["signed_by"].startswith("ed25519-")
    v = store.assets.resolve("tiny-sealed")
    assert v.kind == "package"
    parents = {(e.parent, e.role) for e in store.assets.lineage("tiny-sealed:1").upstream}
    assert ("tiny:1", "model") in parents, parents

    # nothing of the weights is readable in the package
    weights = (tiny / "model.safetensors").read_bytes()
    sealed = Path(out["path"]).read_bytes()
    for at in range(1000, len(weights) - 64, len(weights) // 7):
        assert weights[at : at + 64] not in sealed

    r = cli("deploy", "verify", "tiny-sealed", "--pubkey", f"{keyfile}.pub", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["decrypted"] is False  # no key: signature and body only
    r = cli("deploy", "verify", "tiny-sealed", "--key-file", str(keyfile), "--json")
    assert r.code == 0 and json.loads(r.out)["decrypted"] is True

    dest = tmp_path / "unpacked"
    r = cli("deploy", "unpack", out["path"], "--output", str(dest), "--key-file", str(keyfile))
    assert r.code == 0, r.err
    src_files = sorted(p.relative_to(tiny).as_posix() for p in tiny.rglob("*") if p.is_file())
    assert (
        sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == src_files
    )
    for name in src_files:
        assert (dest / name).read_bytes() == (tiny / name).read_bytes(), name


def test_every_single_byte_flip_is_refused(tiny: Path, keys: Path, tmp_path: Path) -> None:
    kek = load_kek(keys)
    pkg = tmp_path / "p.lmpkg"
    write_package(tiny, pkg, signing_key=load_signing_key(keys), kek=kek, chunk_size=1 << 16)
    good = pkg.read_bytes()
    pub = load_public_key(keys)
    _everything(pkg, kek, pub)
    size = len(good)
    rng = random.Random(0)
    # the first and last 200 bytes (markers, trailer, signature), then positions spread
    # over the whole file (body chunks, tags, header)
    positions = sorted(
        set(range(200)) | set(range(size - 200, size)) | {rng.randrange(size) for _ in range(400)}
    )
    bad = tmp_path / "bad.lmpkg"
    missed: list[tuple[int, str]] = []
    for pos in positions:
        data = bytearray(good)
        data[pos] ^= 1 << rng.randrange(8)
        bad.write_bytes(bytes(data))
        for kek_given in (kek, None):
            try:
                _everything(bad, kek_given, pub)
            except UserError as e:
                assert str(bad) in str(e) and "\n" not in str(e)
            else:
                missed.append((pos, "with key" if kek_given else "no key"))
    assert not missed, f"{len(missed)} of {2 * len(positions)} flips not detected: {missed[:5]}"


def test_refusals_are_one_line(cli: Any, tiny: Path, keys: Path, tmp_path: Path) -> None:
    kek = load_kek(keys)
    pkg = tmp_path / "p.lmpkg"
    write_package(tiny, pkg, signing_key=load_signing_key(keys), kek=kek, chunk_size=1 << 16)
    other = generate_keys(tmp_path / "other.json").path

    def refused(*args: str) -> str:
        r = cli("deploy", *args)
        assert r.code == 2, (r.out, r.err)
        lines = r.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.err
        return lines[0]

    msg = refused("verify", str(pkg), "--key-file", str(other))
    assert "sealed with key kek-" in msg and "use the key file" in msg
    msg = refused("verify", str(pkg), "--pubkey", f"{other}.pub")
    assert "not by the trusted key" in msg
    assert "escapes" not in msg

    good = pkg.read_bytes()
    for cut in (1, 20, len(good) // 2, len(good) - 9):
        (tmp_path / "cut.lmpkg").write_bytes(good[:-cut])
        msg = refused("verify", str(tmp_path / "cut.lmpkg"))
        assert "cut.lmpkg" in msg and ("truncated" in msg or "damaged" in msg)
    # a whole chunk cut out of the middle, the trailer re-attached: the body digest fails
    header_at = len(good) - (len(good) - 8 - (1 << 16) - 16)
    spliced = good[:8] + good[8 + (1 << 16) + 16 :]
    (tmp_path / "spliced.lmpkg").write_bytes(spliced)
    assert header_at > 0
    refused("verify", str(tmp_path / "spliced.lmpkg"), "--key-file", str(keys))

    unsigned = tmp_path / "unsigned.lmpkg"
    write_package(tiny, unsigned, kek=kek)
    assert "not signed" in refused("verify", str(unsigned), "--key-file", str(keys))
    assert (
        cli("deploy", "verify", str(unsigned), "--key-file", str(keys), "--allow-unsigned").code
        == 0
    )
    assert "not an lmops package" in refused("verify", str(tiny / "config.json"))
    assert "holds no key-encryption key" in refused(
        "unpack", str(pkg), "--output", str(tmp_path / "x"), "--key-file", f"{keys}.pub",
        "--pubkey", f"{keys}.pub",
    )  # fmt: skip
    assert not (tmp_path / "x").exists()
    # a package command without a key: nothing registered
    r = cli("deploy", "package", str(tiny), "--encrypt", "--output", "nokey")
    assert r.code == 2 and "LMOPS_KEK" in r.err
    assert "give --kek-file FILE" in r.err  # package's own option, not --key-file


def test_serve_encrypted_package_from_memory(
    store: Any, lmops_home: Path, tiny: Path, keys: Path, tmp_path: Path
) -> None:
    """Two deployments in one real server: the plain folder and its encrypted package; the
    same greedy replies through the openai client, and no weights written to disk."""
    import httpx
    from openai import OpenAI

    pkg = tmp_path / "tiny.lmpkg"
    write_package(tiny, pkg, signing_key=load_signing_key(keys), kek=load_kek(keys))
    secret = store.keys.create("app")[1]
    auth = {"Authorization": f"Bearer {secret}"}
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**lmops_env(lmops_home), "TMPDIR": str(scratch)}
    env.pop("LMOPS_KEK", None)
    proc, base = start_server(
        env, "--model", f"plain={tiny}", "--model", f"sealed={pkg}", "--key-file", str(keys),
        "--pubkey", f"{keys}.pub",
        ready=lambda b: httpx.get(b + "/v1/models", headers=auth, timeout=5).status_code == 200,
    )  # fmt: skip
    try:
        # the private folder of config and tokenizer is gone once the model is loaded
        assert not [p for p in scratch.rglob("*") if p.name.startswith("lmops-unsealed")]
        assert not list(scratch.rglob("*.safetensors"))
        client = OpenAI(base_url=base + "/v1", api_key=secret)
        for prompt in ("The quick brown", "Hello, how", "12+34="):
            got = [
                client.completions.create(model=m, prompt=prompt, max_tokens=8, temperature=0)
                .choices[0]
                .text
                for m in ("plain", "sealed")
            ]
            assert got[0] == got[1], (prompt, got)
        # the same verify over /api/deploy (admin key), and its one-line refusal as a 400
        admin = {"Authorization": f"Bearer {store.keys.create('ops', role='admin')[1]}"}
        body = {"package": str(pkg), "key_file": str(keys), "pubkey": f"{keys}.pub"}
        r = httpx.post(base + "/api/deploy/verify", json=body, headers=admin, timeout=60)
        assert r.status_code == 200 and r.json()["decrypted"] is True, r.text
        bad = tmp_path / "bad.lmpkg"
        data = bytearray(pkg.read_bytes())
        data[len(data) // 2] ^= 4
        bad.write_bytes(bytes(data))
        r = httpx.post(
            base + "/api/deploy/verify", json={**body, "package": str(bad)}, headers=admin
        )
        assert r.status_code == 400 and "bad.lmpkg" in r.json()["error"]["message"], r.text
    finally:
        stop_server(proc)


def test_serve_refuses_wrong_key(tiny: Path, keys: Path, tmp_path: Path) -> None:
    from lmops.serve.deployments import Deployment, DeploymentSpec

    other = generate_keys(tmp_path / "other.json").path
    pkg = tmp_path / "tiny.lmpkg"
    write_package(tiny, pkg, signing_key=load_signing_key(keys), kek=load_kek(keys))
    spec = DeploymentSpec(
        name="x", model=str(pkg), key_file=str(other), public_key=f"{keys}.pub", device="cpu"
    )
    with pytest.raises(UserError, match="sealed with key kek-") as e:
        Deployment(spec, None)
    assert str(pkg) in str(e.value)
    spec = spec.model_copy(update={"key_file": str(keys), "public_key": f"{other}.pub"})
    with pytest.raises(UserError, match="not by the trusted key"):
        Deployment(spec, None)


def test_signed_and_sealed_int8_packages_serve_as_the_int8_folder(
    store: Any, tiny: Path, keys: Path, tmp_path: Path
) -> None:
    """A package of an int8 folder (lmops_quant.safetensors + lmops_quant.json, tied head)
    is loaded the way the folder is: int8 modules, the embedding rebuilt from the head, and
    the same greedy tokens, signed only or signed and encrypted."""
    import torch

    from lmops.deploy.quantize import QuantizeConfig, quantize_model
    from lmops.models.engine import Engine
    from lmops.serve.deployments import Deployment, DeploymentSpec

    res = quantize_model(store, str(tiny), output="tiny-int8", config=QuantizeConfig())
    folder = Path(store.assets.path(res.ref))
    prompts = [[5, 17, 42, 7], [99, 3, 250, 12, 8]]
    plain = Engine(folder, device="cpu")
    try:
        want = [greedy_ids(plain, p) for p in prompts]
    finally:
        plain.close()
    assert all(want)
    sealed = {"signed": None, "sealed": load_kek(keys)}
    for name, kek in sealed.items():
        pkg = tmp_path / f"{name}.lmpkg"
        write_package(folder, pkg, signing_key=load_signing_key(keys), kek=kek)
        spec = DeploymentSpec(
            name=name, model=str(pkg), key_file=str(keys), public_key=f"{keys}.pub", device="cpu"
        )
        engine = Deployment(spec, None).targets[0][0].engine
        try:
            assert not any(isinstance(m, torch.nn.Linear) for m in engine.model.modules()), name
            assert [greedy_ids(engine, p) for p in prompts] == want, name
        finally:
            engine.close()


@pytest.mark.parametrize("with_head", [False, True])
def test_an_encoder_package_serves_the_folders_embeddings(
    keys: Path, tmp_path: Path, with_head: bool
) -> None:
    """A sentence encoder in a sealed package is loaded as an encoder (it used to be built
    as a causal LM and refused); a checkpoint saved with its masked-LM head (``bert.``
    before every base weight) loads as AutoModel loads it from disk."""
    from lmops.serve.deployments import Deployment, DeploymentSpec
    from tests.models.tiny_bert import make_tiny_bert

    bert = make_tiny_bert(tmp_path / "bert")
    if with_head:
        from transformers import BertForMaskedLM

        BertForMaskedLM.from_pretrained(str(bert)).save_pretrained(str(bert))
    pkg = tmp_path / "bert.lmpkg"
    write_package(bert, pkg, signing_key=load_signing_key(keys), kek=load_kek(keys))
    texts = ["hello world", "the quick brown fox"]
    got = []
    for ref in (str(bert), str(pkg)):
        spec = DeploymentSpec(name="e", model=ref, key_file=str(keys), public_key=f"{keys}.pub")
        target = Deployment(spec, None).targets[0][0]
        assert target.serves == ("embeddings",)
        got.append(target.embed(texts))
    assert got[0][1] == got[1][1]
    for a, b in zip(got[0][0], got[1][0], strict=True):
        assert a == pytest.approx(b, abs=1e-6)
