"""Models served straight from a sealed package (``lmops.core.sealed``), with no plaintext
weights on disk.

:func:`unsealed_model` decrypts the package into memory: every ``*.safetensors`` file is
read chunk by chunk (each chunk authenticated, the file checked against its manifest
digest) and turned into tensors with ``safetensors.torch.load`` from bytes. The small
files a model folder also needs (``config.json``, the tokenizer, ``generation_config.json``)
are written to a private temp folder (mode 0700) because transformers reads them from a
folder; the folder is removed when the context exits, once the engine has loaded them.
Weights in any other format (``pytorch_model.bin``) are refused rather than written out.
A quantized folder's ``lmops_quant.safetensors`` is read the same way, and
:func:`load_from_state_dict` builds the model from it as ``load_quantized`` does from disk.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lmops.core.errors import UserError
from lmops.core.proc import owned_tempdir
from lmops.core.sealed import Package, is_package, load_kek, load_public_key, open_package

__all__ = ["load_from_state_dict", "open_trusted", "package_path", "unsealed_model"]

_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".gguf")


def package_path(ref_or_path: str, store: Any | None) -> tuple[Path | None, str | None]:
    """(the package file, its version ref or None) behind ``ref_or_path`` (a path, or an
    asset of kind ``package``); (None, None) when it names something else."""
    p = Path(ref_or_path).expanduser()
    if p.exists():
        return (p, None) if p.is_file() and is_package(p) else (None, None)
    if store is None:
        return None, None
    try:
        v = store.assets.resolve(ref_or_path)
    except UserError:
        return None, None
    if v.kind != "package":
        return None, None
    return Path(store.assets.path(v.ref)), v.ref


def open_trusted(
    package: Path,
    *,
    key_file: str | Path | None = None,
    public_key: str | Path | None = None,
) -> Package:
    """Open a package to serve it: signed by a trusted key (``public_key``, a key file or
    ``.pub``, pins the signer; else one in ``$LMOPS_HOME/trusted-keys``) and, when it is
    encrypted, with its data key unwrapped by the KEK of ``key_file`` or ``$LMOPS_KEK``.
    Reads the header only (a signature over it covers every byte's digest) and unwraps one
    32-byte key: cheap whatever the package's size, so ``lmops serve`` checks it before it
    says it is serving. The weights are checked as they are read."""
    pin = load_public_key(Path(public_key)) if public_key else None
    # serving always needs a trusted signer: there is no --allow-unsigned to offer here
    fix = "lmops serve needs a package signed by a trusted key: re-package with --sign KEY"
    pkg = open_package(Path(package), trusted_key=pin, unsigned_fix=fix)
    if pkg.encrypted:
        # serve's option, or key_file: in a deployments file
        kek = load_kek(Path(key_file) if key_file else None, option="--key-file (key_file:)")
        pkg = open_package(Path(package), kek=kek, trusted_key=pin, unsigned_fix=fix)
    return pkg


@contextmanager
def unsealed_model(
    package: Path,
    *,
    key_file: str | Path | None = None,
    public_key: str | Path | None = None,
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Yield (folder with the non-weight files, state dict) of a package opened by
    :func:`open_trusted`; the folder is removed on exit."""
    from safetensors.torch import load

    pkg = open_trusted(package, key_file=key_file, public_key=public_key)
    names = [f["path"] for f in pkg.files]
    weights = [n for n in names if n.endswith(".safetensors")]
    if not weights:
        raise UserError(
            f"{package}: holds no .safetensors weights; save the model with "
            "save_pretrained(safe_serialization=True) and package it again"
        )
    other = [n for n in names if n.endswith(_WEIGHT_SUFFIXES)]
    if other:
        raise UserError(
            f"{package}: holds {other[0]}, which cannot be loaded from memory; package a folder "
            "with safetensors weights only"
        )
    folder = owned_tempdir("lmops-unsealed-")  # 0700: mkdtemp's own mode
    try:
        state: dict[str, Any] = {}
        for name in names:
            if name in weights:
                state.update(load(pkg.read(name)))
            else:
                if ".." in Path(name).parts or Path(name).is_absolute():
                    raise UserError(f"{package}: file name {name!r} escapes the package folder")
                dest = folder / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(pkg.read(name))
        yield folder, state
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def load_from_state_dict(
    folder: Path, state: Mapping[str, Any], dtype: Any = None, *, device: str = "cpu"
) -> Any:
    """The causal LM built from ``folder``'s config with ``state`` as its weights (no weight
    file read), in eval mode on ``device``. A quantized folder (``lmops_quant.json``, from
    ``lmops deploy quantize``) loads as :func:`lmops.models.quantized.load_quantized` loads
    it from disk, ``state`` being its ``lmops_quant.safetensors``: int8 modules, and the
    tied embedding rebuilt from the head. Otherwise weights tied to others (``lm_head``
    with tied embeddings) may be absent; anything else missing or unexpected is an error
    naming it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lmops.models.encoder import model_kind
    from lmops.models.quantized import is_quantized, load_quantized

    if is_quantized(folder):
        return load_quantized(folder, device=device, tensors=dict(state))
    config = AutoConfig.from_pretrained(str(folder))
    if model_kind(folder)[0] == "encoder":  # no language-model head: as Encoder loads it
        return _encoder_from_state_dict(folder, config, state, dtype, device)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)
    missing, unexpected = model.load_state_dict(dict(state), strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    if getattr(config, "tie_word_embeddings", False):
        tied.add("lm_head.weight")
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise UserError(f"{folder}: the packaged weights do not fit its config.json ({what})")
    model.tie_weights()
    return model.to(device).eval()


def _encoder_from_state_dict(
    folder: Path, config: Any, state: Mapping[str, Any], dtype: Any, device: str
) -> Any:
    """An encoder-only model (``AutoModel``) with ``state`` as its weights. A checkpoint of
    the model with a head (``bert.`` before every base weight) loads as AutoModel loads it
    from disk: the prefix dropped, the head's weights left out."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_config(config, dtype=dtype or torch.float32)
    prefix = f"{model.base_model_prefix}."
    own = set(model.state_dict())
    weights = {
        k.removeprefix(prefix) if k not in own and k.startswith(prefix) else k: v
        for k, v in state.items()
    }
    missing, _ = model.load_state_dict(weights, strict=False)
    # a head's checkpoint has no pooler; embeddings pool the hidden states, never it
    missing = [k for k in missing if not k.startswith("pooler.")]
    if missing:
        raise UserError(
            f"{folder.name}: the packaged encoder's weights do not fit its config.json "
            f"(missing {missing[0]})"
        )
    return model.to(device).eval()
