"""The local GGUF teacher and the shared AMX crash fix (kardlite._llama)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from kardlite._llama import apply_amx_fix, packaged_smollm2
from kardlite.errors import InputError

pytestmark = pytest.mark.slow


def test_fix_sets_use_extra_bufts_false_on_every_params_struct() -> None:
    import llama_cpp.llama_cpp as lowlevel

    apply_amx_fix()
    apply_amx_fix()  # idempotent: one wrapper, not a chain
    assert lowlevel.llama_model_default_params.__wrapped__.__name__ == "llama_model_default_params"
    assert not getattr(lowlevel.llama_model_default_params.__wrapped__, "_kardlite_amx_fix", False)
    assert lowlevel.llama_model_default_params().use_extra_bufts is False


def test_multi_token_prompt_does_not_crash_and_teacher_writes_samples(tmp_path) -> None:
    # In a subprocess: without the fix this segfaults on AMX CPUs, which must fail the test, not kill pytest.
    script = textwrap.dedent(f"""
        from kardlite._llama import load_llama
        from kardlite.data.records import QAItem
        from kardlite.rationales.store import read_store
        from kardlite.teacher import get_teacher

        llama = load_llama(n_ctx=512, n_threads=1)
        assert llama.model_params.use_extra_bufts is False
        out = llama("The sun is a star. Plants use sunlight to make food, and animals eat plants because",
                    max_tokens=8, temperature=0.0)
        assert out["usage"]["prompt_tokens"] > 10, out
        teacher = get_teacher("llamacpp", n_ctx=1024, n_threads=1, max_tokens=12, seed=3)
        item = QAItem("q1", "Which is a source of light?", ("a rock", "the sun"), 1)
        s = teacher.generate([item], 2, store=r"{tmp_path / 's.jsonl'}", progress=False)
        samples = read_store(r"{tmp_path / 's.jsonl'}").samples
        assert [x["sample"] for x in samples] == [0, 1] and all(x["backend"] == "llamacpp" for x in samples)
        assert samples[0]["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
        print("OK", s.written)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode} (negative = signal):\n{proc.stderr[-3000:]}"
    assert "OK 2" in proc.stdout


def test_missing_gguf_is_an_input_error(tmp_path) -> None:
    from kardlite._llama import load_llama

    with pytest.raises(InputError, match="not found"):
        load_llama(tmp_path / "nope.gguf")
    assert packaged_smollm2().name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_threads_default_to_every_usable_cpu_for_prompt_and_decode() -> None:
    # llama-cpp-python alone decodes on half the CPUs (one of two here); None must mean all of them, both phases.
    from kardlite._llama import load_llama, usable_cpus

    cpus = usable_cpus()
    assert cpus >= 1
    llama = load_llama(n_ctx=256)
    assert (llama.context_params.n_threads, llama.context_params.n_threads_batch) == (cpus, cpus)
    llama = load_llama(n_ctx=256, n_threads=1, n_threads_batch=None)
    assert (llama.context_params.n_threads, llama.context_params.n_threads_batch) == (1, 1)
    llama = load_llama(n_ctx=256, n_threads=1, n_threads_batch=2)
    assert (llama.context_params.n_threads, llama.context_params.n_threads_batch) == (1, 2)
