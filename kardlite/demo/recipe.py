"""The demo student's recipe: how ``kardlite demo`` trains its student, in one place.

The demo build trains with it (or merges the shipped adapter that was trained with it, kardlite/demo/adapter.py),
``kardlite demo --retrain`` reads it back from the adapter's manifest, and ``kardlite train demo-adapter`` takes
each field as an option. Change a default here and the next demo build (and adapter) follows.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from kardlite.errors import InputError

# The first run's student: 12 LoRA steps (48 of the 216 examples) at a high LoRA learning rate, within the "at most
# 10 minutes on 2 cores" budget (kardlite/demo/build.py): enough to learn the explain-then-"Answer: X" format and
# the use of passages, not the medicine. An adapter trained longer ships with its own recipe in its manifest.
# The prompt budget is the runtime's as well (the bundle carries it), so training and inference see one prompt.
STUDENT_SETTINGS: dict[str, Any] = {"max_steps": 12, "batch_size": 4, "grad_accum": 1, "lr": 5e-4,
                                    "max_source_tokens": 384, "max_target_tokens": 160, "lora_r": 16,
                                    "lora_alpha": 32, "dev_fraction": 0.0, "save_every": 4}
# Passages per training example, and so shown at run time (the trained student records it; the fast mode's base
# model has no record, so the bundle is given it): demo questions name one or two gold passages each.
N_DOCS = 2
STUDENT_MODE = "kard"  # the prompt mode the demo student is trained in (kardlite.prompts.MODES)
STUDENT_QUERY = "rationale"  # what retrieves a training example's passages (KARD's way; "question": the ablation)
STUDENT_RETRIEVER = "bm25"  # the first stage that retrieves them (the paper's)

# StudentTrainConfig fields that change how a run goes (memory, speed, logs, checkpoints), not the weights it learns:
# train_student resumes across a change of max_batch_tokens or pack, and the others never touch the optimiser. Two
# recipes that differ only there make the same student, so comparisons and run-folder names leave them out: a
# throughput default changed later neither breaks a shipped adapter's command nor rebuilds the demo bundle.
NOT_LEARNT = frozenset({"max_batch_tokens", "pack", "gradient_checkpointing", "save_every", "eval_every", "log_every",
                        "snapshot_every", "extra"})

COMMAND = "kardlite train demo-adapter"  # the command that trains the recipe and writes the shipped adapter
# Its recipe options: parameter name -> where the value lives in StudentRecipe.to_json(). The
# command line recorded in adapter.json spells out every one, so it reproduces the recipe whatever the defaults.
RECIPE_OPTIONS: dict[str, str] = {
    "mode": "mode", "n_docs": "n_docs", "query": "query", "answer_format": "train.answer_format",
    "lr": "train.lr", "steps": "train.max_steps", "batch_size": "train.batch_size",
    "grad_accum": "train.grad_accum", "lora_r": "train.lora_r", "lora_alpha": "train.lora_alpha",
    "freeze_layers": "train.freeze_layers", "max_source_tokens": "train.max_source_tokens",
    "max_target_tokens": "train.max_target_tokens", "seed": "train.seed", "student": "train.student",
}


@dataclass(frozen=True)
class StudentRecipe:
    """How the demo student is made: the one record of its settings, defaults from the constants above.

    The demo build trains with it (or merges the shipped adapter that was trained with it), ``--retrain`` reads
    it back from the adapter's manifest, and ``kardlite train demo-adapter`` takes each field as an option.

    Attributes:
        mode: prompt mode of the training examples and of the bundle (``kard``, ``rd``, ``ft``, ``ka-ft``).
        n_docs: passages per training example, and so shown at run time.
        query: what retrieves a training example's passages: the ``rationale`` or the ``question``.
        settings: ``StudentTrainConfig`` fields over its defaults (lr, max_steps, answer_format, lora_r, ...).
    """

    mode: str = STUDENT_MODE
    n_docs: int = N_DOCS
    query: str = STUDENT_QUERY
    settings: Mapping[str, Any] = field(default_factory=lambda: dict(STUDENT_SETTINGS))

    def train_config(self, student: str | None = None) -> Any:
        """The ``StudentTrainConfig`` (its ``student`` replaced by ``student`` when given: a warm start).

        Raises:
            InputError: an unknown or impossible setting, named.
        """
        from kardlite.distill.train import StudentTrainConfig, check_config

        try:
            cfg = StudentTrainConfig(**dict(self.settings))
        except TypeError as err:  # an unknown field
            raise InputError(f"not a StudentTrainConfig setting ({err})", field="settings") from None
        if student is not None:
            cfg.student = student
        check_config(cfg)
        return cfg

    def to_json(self) -> dict[str, Any]:
        """Every setting spelled out (all ``StudentTrainConfig`` fields), as recorded in manifests."""
        from dataclasses import asdict

        return {"mode": self.mode, "n_docs": self.n_docs, "query": self.query, "retriever": STUDENT_RETRIEVER,
                "train": asdict(self.train_config())}

    @classmethod
    def from_json(cls, data: Any) -> StudentRecipe:
        """The recipe ``to_json`` wrote.

        Raises:
            InputError: a missing or mistyped field, named (``recipe.<field>``).
        """
        if not isinstance(data, Mapping):
            raise InputError("expected an object", field="recipe")
        for key, kind in (("mode", str), ("n_docs", int), ("query", str), ("train", Mapping)):
            if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
                raise InputError(f"missing or not a {kind.__name__}: {data.get(key)!r}", field=f"recipe.{key}")
        if data.get("retriever", STUDENT_RETRIEVER) != STUDENT_RETRIEVER:
            raise InputError(f"only {STUDENT_RETRIEVER!r} is supported, got {data.get('retriever')!r}",
                             field="recipe.retriever")
        recipe = cls(mode=data["mode"], n_docs=data["n_docs"], query=data["query"], settings=dict(data["train"]))
        recipe.check()
        return recipe

    def check(self) -> None:
        """Reject a recipe that cannot train, with the field named (``recipe.<field>``)."""
        from kardlite.prompts import MODES

        if self.mode not in MODES:
            raise InputError(f"unknown mode {self.mode!r}; choose from {', '.join(MODES)}", field="recipe.mode")
        if self.n_docs < 1:
            raise InputError(f"must be at least 1, got {self.n_docs}", field="recipe.n_docs")
        if self.query not in ("rationale", "question"):
            raise InputError(f"must be rationale or question, got {self.query!r}", field="recipe.query")
        try:
            self.train_config()
        except InputError as err:
            message = str(err).split(": ", 1)[-1] if err.field else str(err)  # without its "field 'lr': " prefix
            raise InputError(message, field=f"recipe.train.{err.field or 'settings'}") from None

    def is_default(self) -> bool:
        """Whether it learns what the defaults learn (the :data:`NOT_LEARNT` fields may differ)."""
        return learnt(self.to_json()) == learnt(StudentRecipe().to_json())

    def key(self, *parts: str) -> str:
        """A short digest of what the recipe learns (and of ``parts``, e.g. a warm-start path): names its work
        folders, so a finished run is reused after a throughput setting changed."""
        text = json.dumps([learnt(self.to_json()), *parts], sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]


# ----------------------------------------------------------------------------------------- the command line


def recipe_from_options(params: Mapping[str, Any]) -> StudentRecipe:
    """The recipe that ``kardlite train demo-adapter``'s options ask for: each given option over the defaults.

    Args:
        params: the command's parameters by name (``click.Context.params``); None = the recipe's default.
    """
    recipe = StudentRecipe().to_json()
    for name, where in RECIPE_OPTIONS.items():
        value = params.get(name)
        if value is None:
            continue
        if isinstance(value, Enum):
            value = value.value
        head, _, leaf = where.rpartition(".")
        (recipe[head] if head else recipe)[leaf] = str(value) if isinstance(value, Path) else value
    return StudentRecipe.from_json(recipe)


def command_line(recipe: StudentRecipe, warm_start: str | Path | None = None) -> str:
    """The ``kardlite train demo-adapter`` command that makes this recipe's adapter, every setting spelled out."""
    spelled = recipe.to_json()
    parts = shlex.split(COMMAND)
    for name, where in RECIPE_OPTIONS.items():
        value = lookup(spelled, where)
        if value is not None:
            parts += [f"--{name.replace('_', '-')}", repr(value) if isinstance(value, float) else str(value)]
    if warm_start is not None:
        parts += ["--warm-start", str(warm_start)]
    return shlex.join(parts)


def learnt(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """A recipe as ``StudentRecipe.to_json`` writes it, without the training fields in :data:`NOT_LEARNT`."""
    train = recipe.get("train")
    if not isinstance(train, Mapping):
        return dict(recipe)
    return {**recipe, "train": {k: v for k, v in train.items() if k not in NOT_LEARNT}}


def lookup(data: Mapping[str, Any], where: str) -> Any:
    """``data["a"]["b"]`` for ``where="a.b"``."""
    for part in where.split("."):
        data = data[part]
    return data


def flatten(data: Any, prefix: str) -> dict[str, Any]:
    """Nested objects as one level of dotted keys: ``{"a": {"b": 1}}`` -> ``{"prefix.a.b": 1}``."""
    if not isinstance(data, Mapping):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}.{key}"))
    return out
