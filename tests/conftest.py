from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

# Nothing may reach a model hub: every model comes from a package or a local path.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# OpenBookQA + the KARD release (layout: docs/environment.md); KARDLITE_OBQA points elsewhere.
OBQA = Path(os.environ.get("KARDLITE_OBQA") or SHARED_DATA / "obqa")

needs_shared = pytest.mark.skipif(not OBQA.is_dir(), reason=f"shared benchmark data not present at {OBQA}")

# The demo student's trained LoRA adapter, shipped in the package (kardlite/demo/adapter.py). Without it the full
# demo build trains a 12-step student that nobody expects to answer well, so tests of a trained student's answers
# need it; it is a real precondition (`kardlite train demo-adapter` makes it), not a way to hide a failure.
SHIPPED_ADAPTER = Path(importlib.util.find_spec("kardlite").submodule_search_locations[0]) / "demo" / "adapter"
needs_trained_demo = pytest.mark.skipif(
    not (SHIPPED_ADAPTER / "adapter.json").is_file(),
    reason=f"needs the trained demo student: the shipped LoRA adapter {SHIPPED_ADAPTER} is absent "
           "(`kardlite train demo-adapter` makes it)")


def load_script(path: Path) -> ModuleType:
    """A script that is no package module (bench/, notebooks/build.py), imported from its file for its tests."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session", autouse=True)
def _encoder_export_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One user cache per test session (kardlite.kb.encoder.cache_dir): the first dense KB build exports MiniLM,
    later ones copy that export, and a developer's own cache is neither used nor filled."""
    path = tmp_path_factory.mktemp("kardlite-cache")
    os.environ["KARDLITE_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def obqa_dir() -> Path:
    if not OBQA.is_dir():
        pytest.skip(f"shared benchmark data not present at {OBQA}")
    return OBQA


@pytest.fixture(scope="session")
def demo_bundle_fast(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fast-mode demo bundle (real KB and GGUF; no reranker, untrained student), built once per session."""
    from kardlite.demo.build import build_demo_bundle

    return build_demo_bundle(tmp_path_factory.mktemp("demo") / "bundle", fast=True, progress=False)


@pytest.fixture(scope="session")
def demo_bundle_trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full demo bundle with the shipped trained student (its adapter merged, no student training; the reranker
    is trained here: minutes on 2 cores). Use with ``needs_trained_demo``. KARDLITE_TEST_BUNDLE_ROOT keeps it
    between local runs."""
    from kardlite.demo import adapter as ad
    from kardlite.demo.build import build_demo_bundle

    folder = ad.shipped_adapter_dir()
    if not (folder / ad.MANIFEST).is_file():
        pytest.skip(f"needs the trained demo student: the shipped LoRA adapter {folder} is absent")
    # A shipped adapter that does not fit is a failure, not a reason to train a weak student and test that.
    problems = ad.mismatches(ad.read_manifest(folder), folder)
    assert not problems, f"the shipped adapter does not fit this installation: {problems}"
    return build_demo_bundle(_tiny_root(tmp_path_factory) / "demo-full", fast=False, progress=False)


def _tiny_root(factory: pytest.TempPathFactory) -> Path:
    # KARDLITE_TEST_BUNDLE_ROOT keeps the built student and bundle between local runs (they are rebuilt only
    # when missing); by default everything lives in the session's temp dir.
    env = os.environ.get("KARDLITE_TEST_BUNDLE_ROOT")
    return Path(env) if env else factory.getbasetemp() / "kard-tiny"


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random llama with the real SmolLM2 tokenizer, saved as a student folder (tests/export, runtime)."""
    from tests.export.builders import build_tiny_student

    return build_tiny_student(_tiny_root(tmp_path_factory) / "student")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of the tiny student, built once per session and shared by tests/export and tests/runtime;
    treat it as read-only."""
    from tests.export.builders import build_tiny_bundle

    return build_tiny_bundle(_tiny_root(tmp_path_factory))


@pytest.fixture(scope="session")
def smol_tokenizer():
    from transformers import AutoTokenizer

    from kardlite._hf import resolve

    return AutoTokenizer.from_pretrained(resolve("smollm2"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smol_tokenizer) -> Path:
    """A randomly initialised 2-layer llama (transformers' default init) saved with the real SmolLM2 tokenizer and
    chat template: the students of tests/distill and tests/demo train it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=smol_tokenizer.bos_token_id,
                         eos_token_id=smol_tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out, safe_serialization=True)
    smol_tokenizer.save_pretrained(out)
    return out
