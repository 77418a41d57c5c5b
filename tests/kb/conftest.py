from __future__ import annotations

from pathlib import Path

import pytest

from kardlite.kb import DenseConfig, KBConfig, Passage
from kardlite.kb.config import HNSWConfig, HybridConfig

# A tiny corpus with one clear answer per probe query, shared by the KB tests.
FACTS = [
    ("bee", "A bee is a pollinating animal that carries pollen between flowers"),
    ("sun", "The sun is the source of energy for photosynthesis in green plants"),
    ("magnet", "A magnet attracts objects made of iron or steel"),
    ("ice", "Water freezes into ice when its temperature drops below zero degrees Celsius"),
    ("moon", "The moon orbits the Earth about once every twenty-seven days"),
    ("copper", "Copper is a good conductor of electricity and is used in wires"),
    ("owl", "Owls hunt small mammals at night using keen hearing"),
    ("erosion", "Rivers carve canyons by wearing away rock over millions of years"),
]


@pytest.fixture
def facts() -> list[Passage]:
    return [Passage(id=pid, title="", text=text) for pid, text in FACTS]


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged all-MiniLM-L6-v2, exported to int8 ONNX once per session (~20 s, mostly importing optimum)."""
    from kardlite.kb.encoder import export_encoder

    out = tmp_path_factory.mktemp("encoder") / "encoder"
    export_encoder(DenseConfig(), out)
    return out


@pytest.fixture
def dense_config(encoder_dir: Path) -> KBConfig:
    """Default settings, but reusing the session's exported encoder (a copy, no re-export)."""
    return KBConfig(dense=DenseConfig(model=str(encoder_dir)), hnsw=HNSWConfig(M=8, ef_construction=50),
                    hybrid=HybridConfig(pool=8))


@pytest.fixture
def bm25_config() -> KBConfig:
    return KBConfig(dense=None)
