"""A small handmade world for reranker tests: a real BM25 knowledge base, questions and teacher-like rationales.

Each animal has three facts (where it lives, what it eats, one feature). A question asks where an animal
lives or what it eats; its rationale restates the right fact, so BM25(rationale) ranks that fact first, while
BM25(question) also pulls in the animal's other facts and other animals' facts that share the answer words.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kardlite.data.records import QAItem
from kardlite.kb import KBConfig, KnowledgeBase, Passage

ANIMALS = [
    ("camel", "desert", "dry grass", "a hump"), ("penguin", "antarctic ice", "small fish", "flippers"),
    ("monkey", "rain forest", "ripe bananas", "a long tail"), ("frog", "pond", "flies", "sticky tongue"),
    ("owl", "hollow tree", "mice", "large eyes"), ("shark", "ocean", "seals", "sharp teeth"),
    ("goat", "mountain", "shrubs", "horns"), ("bee", "hive", "nectar", "wings"),
    ("beaver", "river dam", "tree bark", "flat tail"), ("polar bear", "arctic", "seals", "white fur"),
    ("squirrel", "oak tree", "acorns", "bushy tail"), ("mole", "underground tunnel", "earthworms", "big claws"),
    ("eagle", "cliff nest", "rabbits", "hooked beak"), ("crab", "sandy beach", "algae", "a hard shell"),
    ("bat", "cave", "moths", "leathery wings"), ("cow", "farm field", "grass", "four stomachs"),
    ("panda", "bamboo forest", "bamboo shoots", "black patches"), ("koala", "eucalyptus tree", "eucalyptus leaves",
                                                                    "soft ears"),
    ("lizard", "warm rocks", "crickets", "scales"), ("duck", "lake", "water plants", "webbed feet"),
]


def toy_passages() -> list[Passage]:
    out = []
    for i, (a, home, food, feat) in enumerate(ANIMALS):
        out.append(Passage(id=f"home-{i}", title="", text=f"the {a} lives in the {home}"))
        out.append(Passage(id=f"food-{i}", title="", text=f"the {a} eats {food} for energy"))
        out.append(Passage(id=f"feat-{i}", title="", text=f"the {a} has {feat}"))
    return out


def toy_items_and_rationales() -> tuple[list[QAItem], list[tuple[str, int, str]]]:
    items, rats = [], []
    n = len(ANIMALS)
    for i, (a, home, food, _feat) in enumerate(ANIMALS):
        homes = [home] + [ANIMALS[(i + d) % n][1] for d in (3, 7, 11)]
        items.append(QAItem(id=f"where-{i}", question=f"Where would you most likely find a {a}?",
                            options=tuple(homes), label=0))
        rats.append((f"where-{i}", 0, f"A {a} lives in the {home}. So you would find it in the {home}."))
        rats.append((f"where-{i}", 1, f"The {home} is where the {a} lives, so the answer is the {home}."))
        foods = [food] + [ANIMALS[(i + d) % n][2] for d in (2, 5, 9)]
        items.append(QAItem(id=f"food-{i}", question=f"What does a {a} get energy from?",
                            options=tuple(foods), label=0))
        rats.append((f"food-{i}", 0, f"A {a} eats {food}, and eating {food} gives the {a} its energy."))
    return items, rats


@pytest.fixture(scope="session")
def toy_kb(tmp_path_factory: pytest.TempPathFactory) -> KnowledgeBase:
    out: Path = tmp_path_factory.mktemp("toykb") / "kb"
    return KnowledgeBase.build(toy_passages(), out, config=KBConfig(dense=None), progress=False)


@pytest.fixture(scope="session")
def toy_data() -> tuple[list[QAItem], list[tuple[str, int, str]]]:
    return toy_items_and_rationales()


@pytest.fixture(scope="session")
def toy_split(toy_kb, toy_data):
    from kardlite.rerank.data import build_queries, split_by_item

    items, rats = toy_data
    return split_by_item(build_queries(toy_kb, items, rats, progress=False), 0.25, seed=3)


@pytest.fixture(scope="session")
def toy_reranker_dir(tmp_path_factory: pytest.TempPathFactory, toy_split) -> Path:
    """A reranker trained briefly on the toy world (3 encoder layers to keep CPU time low)."""
    from kardlite.rerank.train import RerankTrainConfig, train_reranker

    out = tmp_path_factory.mktemp("toyrr") / "reranker"
    cfg = RerankTrainConfig(epochs=3, queries_per_batch=8, lr=2e-4, head_lr_mult=20, num_layers=3, max_length=64,
                            seed=0, threads=2)
    return train_reranker(toy_split, out, cfg, progress=False)


@pytest.fixture(scope="session")
def toy_late_dir(tmp_path_factory: pytest.TempPathFactory, toy_split) -> Path:
    """A late-interaction reranker trained briefly on the toy world (1 encoder layer, dim 32: fast on a CPU)."""
    from kardlite.rerank.train import RerankTrainConfig, train_reranker

    out = tmp_path_factory.mktemp("toylate") / "reranker"
    cfg = RerankTrainConfig(kind="late-interaction", dim=32, epochs=3, queries_per_batch=8, lr=2e-4, head_lr_mult=1,
                            num_layers=1, max_length=64, seed=0, threads=2)
    return train_reranker(toy_split, out, cfg, progress=False)
