"""The ``general.*`` metadata of a GGUF file (name, basename, finetune, size label, license,
organization, languages, tags, base models...), kept from import to export.

``import_gguf`` copies it into the model asset's metadata (``gguf_general``), so an export
of that model (``export_gguf``) writes it back and the round trip keeps it: a file that
came with ``general.license = apache-2.0`` leaves with it. The keys the writer itself sets
for the new file (architecture, file type, quantization version, alignment) are not
carried. A model imported before lmops kept this metadata has it read from the GGUF file its
lineage names, while that file still holds the imported bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmops.core.errors import LmopsError

__all__ = ["add_general", "read_general", "source_general"]

# set by the writer for the file it writes: never copied from the source
_OWN = (
    "general.architecture",
    "general.file_type",
    "general.quantization_version",
    "general.alignment",
)


def read_general(file: Path) -> dict[str, Any]:
    """The carried ``general.*`` fields of GGUF ``file`` as JSON values (strings, numbers,
    lists of them), in file order."""
    import gguf

    reader = gguf.GGUFReader(str(file))
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("general.") and key not in _OWN:
            value = field.contents()
            if isinstance(value, str | int | float | bool | list):
                out[key] = value
    return out


def source_general(store: Any, src_ref: str | None) -> dict[str, Any]:
    """The ``general.*`` fields to carry into an export of model version ``src_ref``: those
    of the GGUF it was imported from (``lmops assets import gguf``), else none (a model
    trained, tuned or transformed here is a new model: it keeps no source file's license
    or name)."""
    if src_ref is None:
        return {}
    v = store.assets.get(src_ref)
    if v.metadata.get("imported_from") != "gguf":
        return {}
    kept = v.metadata.get("gguf_general")
    if isinstance(kept, dict):
        return kept
    from lmops.deploy.gguf import gguf_file_of

    for edge in store.assets.lineage(v.ref, depth=1).upstream:
        if edge.child == v.ref and edge.role == "gguf":
            try:  # an external reference is only read while it holds the imported bytes
                file = gguf_file_of(Path(store.assets.path(edge.parent)))
            except LmopsError:
                return {}
            return read_general(file) if file is not None else {}
    return {}


def add_general(writer: Any, general: dict[str, Any]) -> None:
    """Write ``general`` (:func:`read_general`'s fields) with the types the GGUF spec gives
    its ``general.*`` keys: strings, arrays of strings, uint32 counts."""
    for key, value in general.items():
        if key in _OWN or key == "general.name":  # the name: write_gguf's add_name
            continue
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            if 0 <= value < 2**32:
                writer.add_uint32(key, value)
            else:
                writer.add_int64(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, list) and value:  # an empty one has no element type: left out
            writer.add_array(key, value)
