"""The schema of a bundle's ``manifest.json``: every field the runtime reads, with its type and range.

``read_manifest`` checks the digest, kind, version and paths; :func:`check_manifest` checks the values, so that a
manifest edited and re-sealed by hand (its digest then matches) fails at load with an ArtifactError naming the
field, never with a traceback in the middle of an answer. Hand-written (no schema library): the manifest has a
few dozen fields and each check is one line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kardlite.errors import ArtifactError
from kardlite.settings import FIRST_STAGES

MAX_SEED = 2**31 - 1  # llama.cpp takes a 32-bit seed

Check = Callable[[Any], str | None]  # None when the value is fine, else what it should be


def _int(low: int, high: int | None = None) -> Check:
    def check(v: Any) -> str | None:
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high)
        return None if ok else f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")
    return check


def _number(low: float, high: float, *, low_open: bool = False) -> Check:
    def check(v: Any) -> str | None:
        ok = (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
              and (low < v if low_open else low <= v) and v <= high)
        return None if ok else f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
    return check


def _one_of(*choices: Any) -> Check:
    return lambda v: None if isinstance(v, str) and v in choices else f"one of {', '.join(map(repr, choices))}"


def _str(v: Any) -> str | None:
    return None if isinstance(v, str) and v else "a non-empty string"


def _opt_str(v: Any) -> str | None:
    return None if v is None or isinstance(v, str) else "a string or null"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def _opt_dict(v: Any) -> str | None:
    return None if v is None or isinstance(v, dict) else "an object or null"


# section -> field -> (required, check). Fields not listed here are not read by the runtime.
DECODING: dict[str, tuple[bool, Check]] = {
    "max_new_tokens": (True, _int(1)), "temperature": (True, _number(0.0, 5.0)),
    "sample_temperature": (True, _number(0.0, 5.0)), "top_k": (True, _int(0)),
    "top_p": (True, _number(0.0, 1.0, low_open=True)), "samples": (False, _int(1)), "n_ctx": (False, _int(16)),
    "seed": (False, _int(0, MAX_SEED)),
}


def _sections() -> dict[str, dict[str, tuple[bool, Check]]]:
    from kardlite.prompts import MODES

    return {
        "student": {"file": (True, lambda v: None if isinstance(v, str) and v.endswith(".gguf")
                             else "the path of a .gguf file")},
        "tokenizer": {"bos_token": (False, _opt_str), "eos_token": (False, _opt_str)},
        "prompt": {"mode": (True, _one_of(*MODES)), "max_tokens": (True, _int(1)),
                   "use_chat_template": (False, _bool)},
        "retrieval": {"kb": (False, _str), "first_stage": (True, _one_of(*FIRST_STAGES)), "pool": (True, _int(1)),
                      "n_docs": (True, _int(1)), "reranker": (False, _opt_dict)},
        "decoding": DECODING,
    }


def check_manifest(bundle: str | Path, manifest: Mapping[str, Any]) -> None:
    """Check every field of a bundle manifest that the runtime uses.

    Args:
        bundle: the bundle folder (named in errors).
        manifest: the manifest as :func:`kardlite.export.bundle.read_manifest` returned it.

    Raises:
        ArtifactError: naming ``manifest.json`` and the first bad field (a missing section or field, a wrong type,
            a value out of range, an unknown decoding setting, a chat template that does not render).
    """
    where = Path(bundle) / "manifest.json"

    def bad(field: str, value: Any, want: str) -> ArtifactError:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return ArtifactError(f"{where}: field '{field}' is {shown}; expected {want}")

    for name, fields in _sections().items():
        section = manifest.get(name)
        if not isinstance(section, dict):
            raise bad(name, section, "an object")
        for key, (required, check) in fields.items():
            if key not in section:
                if required:
                    raise ArtifactError(f"{where}: field '{name}.{key}' is missing")
                continue
            want = check(section[key])
            if want is not None:
                raise bad(f"{name}.{key}", section[key], want)
    unknown = sorted(set(manifest["decoding"]) - set(DECODING))
    if unknown:
        raise ArtifactError(f"{where}: unknown decoding setting(s) {unknown}; known: {sorted(DECODING)}")
    rr = manifest["retrieval"].get("reranker")
    if rr is not None:
        for key, check in (("dir", _str), ("passage_cache", _opt_str)):
            want = check(rr.get(key))
            if want is not None:
                raise bad(f"retrieval.reranker.{key}", rr.get(key), want)
    for key, check in (("chat_template", _opt_str), ("calibration", _opt_str), ("card", _opt_str),
                       ("name", _opt_str)):
        want = check(manifest.get(key))
        if want is not None:
            raise bad(key, manifest.get(key), want)
    template = manifest.get("chat_template")
    if template and manifest["prompt"].get("use_chat_template"):
        _check_template(where, template, manifest["tokenizer"])


def _check_template(where: Path, template: str, tokenizer: Mapping[str, Any]) -> None:
    """The chat template must render one user turn the way the prompt builder needs (it is rendered per question:
    a syntax error there would surface as a traceback in the middle of an answer)."""
    from kardlite.prompts import chat_frame

    try:
        chat_frame(template, tokenizer.get("bos_token") or "", tokenizer.get("eos_token") or "")
    except Exception as err:  # jinja2's TemplateError family, the template's raise_exception, our InputError
        raise ArtifactError(f"{where}: field 'chat_template' does not render ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''})") from None
