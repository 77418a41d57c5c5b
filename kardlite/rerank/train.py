"""Train the KARD reranker: make f(question, passage) imitate BM25(rationale, passage) over each query's candidates.

Objective (docs/method.md §6): KL( softmax(s/τ1) ‖ softmax(f/τ2) ) per query, s = rationale-BM25 labels,
f = reranker logits (cross-encoder, or scaled MaxSim for late interaction); averaged over the queries of a batch.
Cross-entropy to the best candidate (``objective="ce"``) is the alternative the reference code used by default.

Temperatures, and why these defaults:
  * τ1 (on BM25). Rationale-BM25 scores of one query's candidates run from ~0 (a question-retrieved passage
    that shares no word with the rationale) to ~15-30 (the passage the rationale paraphrases), and the best
    and second-best often differ by 2-6 points. With τ1 = 1 the target is almost one-hot (e^5 ≈ 150) and the
    KL degenerates to CE; with τ1 = 2-3 the target keeps the order of the good candidates, which is the
    knowledge we want to distil. Default: τ1 = 2.0 constant; optional linear annealing from ``tau1`` to
    ``tau1_end`` (e.g. 4 → 1.5, the paper's "soft to sharp" intent). Both ends must be > 0, and the schedule is
    a convex combination of them, so it can never go negative (the reference code's bug).
  * τ2 (on the logits). A cross-encoder's logit has no fixed scale: the model learns it. τ2 only sets the
    initial sharpness; 1.0 makes logits directly log-odds between candidates. The paper's 500 → 100 was for
    ColBERT sums of many cosine similarities (hundreds), not for a 1-logit head.

Schedule: AdamW (weight decay 0.01 except biases and LayerNorm), 5% linear warmup then linear decay,
gradient clipping at 1.0, batches of ``queries_per_batch`` queries × their (≤ 8) candidates. Each epoch ends
with dev metrics (best-candidate top-1 / top-3 rate, dev loss); the epoch with the best dev top-1 (then top-3)
is saved, atomically. ``train_log.jsonl`` keeps one line per step and per evaluation.

Resume: every ``checkpoint_every`` steps and at each epoch's end the run writes ``<out_dir>.checkpoint/``
(atomically: weights, AdamW moments, schedule, the epoch's order and every random state, as safetensors + JSON,
no pickles). Training the same data with the same settings into the same ``out_dir`` continues from it, and ends
where an uninterrupted run ends, bit for bit on the same machine; other data or settings are refused. The
checkpoint is removed once the reranker is saved.

Device: ``device="auto"`` trains on the GPU when torch sees one, else on the CPU; the model and every batch go
there, and so does the dev evaluation. The saved folder is the same either way: the model is moved back to the
CPU before it is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import re
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from kardlite._checkpoint import cpu_copies, restore_optimizer, split_optimizer
from kardlite._io import atomic_dir, atomic_write_json
from kardlite.errors import ArtifactError, InputError, MissingExtraError
from kardlite.rerank.base import DEFAULT_DIM, KINDS, Kind, Reranker
from kardlite.rerank.data import RerankQuery, load_queries
from kardlite.rerank.encoder import DEFAULT_MAX_LENGTH
from kardlite.rerank.metrics import candidate_hit, evaluate_queries, ndcg  # noqa: F401 (also imported from here)

Objective = Literal["kl", "ce"]
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
CHECKPOINT_SUFFIX = ".checkpoint"
# settings that change how fast a run goes, not what it learns: a checkpoint resumes with other values
_RESUME_FREE = ("threads", "eval_batch_size", "device", "checkpoint_every")


@dataclass
class RerankTrainConfig:
    """Reranker training settings (defaults chosen for a 22M cross-encoder on a 2-core CPU).

    Attributes:
        base_model: HF id or folder to start from; None = the packaged all-MiniLM-L6-v2 (fresh mean-pooling head).
        kind: "cross-encoder" (default) or "late-interaction" (ColBERT-style MaxSim, ``kardlite.rerank.late``);
            the objective, data and schedule are the same for both.
        dim: late interaction only: size of the projected token vectors.
        objective: "kl" (the paper's distillation) or "ce" (cross-entropy to the best candidate).
        tau1: temperature on the BM25 labels (start value when annealing). Must be > 0.
        tau1_end: None = constant τ1; else τ1 moves linearly from ``tau1`` to ``tau1_end`` over training.
        tau2: temperature on the reranker's logits (start value). Must be > 0.
        tau2_end: None = constant τ2; else linear from ``tau2`` to ``tau2_end``.
        lr: peak AdamW learning rate. 1e-4 as in the paper: a CPU run is a few hundred steps at most and the
            OBQA run at 1e-4 was still under-fitted after 75 steps (no instability); use ~3e-4 with LoRA.
        head_lr_mult: learning-rate multiplier for the fresh head (``Linear(hidden, 1)`` on the mean-pooled
            states, or the late-interaction projection and scale). The cross-encoder head starts small (logits
            near 0); a faster head lets a few hundred CPU steps build the logit spread sooner while the encoder
            moves at ``lr``.
        weight_decay: AdamW weight decay (not on biases / LayerNorm).
        warmup: share of steps with linear warmup; then linear decay to 0.
        epochs: passes over the training queries.
        queries_per_batch: queries per optimiser step (each with its ≤ 8 candidates).
        max_length: token cap for question + passage (late interaction: for the passage; the question gets 64).
        grad_clip: max gradient norm (0 = off).
        lora: None = full fine-tuning; else e.g. {"r": 16, "alpha": 32, "dropout": 0.1}.
        num_layers: keep only the first N encoder layers (None = all); fewer layers = faster CPU reranking.
        seed: seeds the head, the shuffling and dropout.
        threads: torch intra-op threads (None = torch's default).
        eval_batch_size: pairs per forward pass when evaluating.
        max_train_queries: cap on training queries (0 = all), a seeded sample: quick runs, or a budget.
        max_dev_queries: cap on the dev queries that choose the kept epoch (0 = all), a seeded sample. The dev
            pass scores every dev query's candidates before training and after each epoch.
        device: "auto" (CUDA when torch sees a GPU, else the CPU), "cpu", "cuda" or "cuda:N".
        checkpoint_every: steps between resume checkpoints (0 = only at each epoch's end). A 3-layer MiniLM's
            checkpoint (weights, AdamW moments, the kept epoch's weights) is ~280 MB, written in 0.2-0.7 s on a
            2-core VM; 500 steps are ~4 min of training there.
    """

    base_model: str | None = None
    kind: Kind = "cross-encoder"
    dim: int = DEFAULT_DIM
    objective: Objective = "kl"
    tau1: float = 2.0
    tau1_end: float | None = None
    tau2: float = 1.0
    tau2_end: float | None = None
    lr: float = 1e-4
    head_lr_mult: float = 1.0
    weight_decay: float = 0.01
    warmup: float = 0.05
    epochs: int = 2
    queries_per_batch: int = 8
    max_length: int = DEFAULT_MAX_LENGTH
    grad_clip: float = 1.0
    lora: dict[str, Any] | None = None
    num_layers: int | None = None
    seed: int = 42
    threads: int | None = None
    eval_batch_size: int = 64
    max_train_queries: int = 0
    max_dev_queries: int = 0
    device: str = "auto"
    checkpoint_every: int = 500

    def validate(self) -> None:
        """Raise InputError naming the first bad setting."""
        if self.kind not in KINDS:
            raise InputError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}", field="kind")
        if not isinstance(self.dim, int) or isinstance(self.dim, bool) or self.dim < 1:
            raise InputError(f"dim must be an integer >= 1, got {self.dim!r}", field="dim")
        if self.objective not in ("kl", "ce"):
            raise InputError(f"objective must be 'kl' or 'ce', got {self.objective!r}", field="objective")
        for name in ("tau1", "tau1_end", "tau2", "tau2_end"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
                raise InputError(f"temperatures must be positive and finite, got {value!r}", field=name)
        checks = [(self.lr > 0, "lr", "must be > 0"),
                  (self.head_lr_mult > 0, "head_lr_mult", "must be > 0"),
                  (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
                  (0 <= self.warmup < 1, "warmup", "must be in [0, 1)"), (self.epochs >= 1, "epochs", "must be >= 1"),
                  (self.queries_per_batch >= 1, "queries_per_batch", "must be >= 1"),
                  (self.max_length >= 16, "max_length", "must be >= 16"),
                  (self.grad_clip >= 0, "grad_clip", "must be >= 0"),
                  (self.max_train_queries >= 0, "max_train_queries", "must be >= 0"),
                  (self.max_dev_queries >= 0, "max_dev_queries", "must be >= 0"),
                  (isinstance(self.checkpoint_every, int) and not isinstance(self.checkpoint_every, bool)
                   and self.checkpoint_every >= 0, "checkpoint_every", "must be an integer >= 0"),
                  (self.threads is None or (isinstance(self.threads, int) and not isinstance(self.threads, bool)
                                            and self.threads >= 1), "threads", "must be None or an integer >= 1")]
        for ok, name, msg in checks:
            if not ok:
                raise InputError(f"{msg}, got {getattr(self, name)!r}", field=name)
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise InputError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}",
                             field="device")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_device(device: str = "auto") -> str:
    """The torch device a training run uses: "auto" → "cuda" when torch sees a GPU, else "cpu".

    Raises:
        InputError (field "device"): an unknown device string, or a CUDA device that this machine lacks.
    """
    try:
        import torch
    except ImportError:
        raise MissingExtraError("torch", "train") from None

    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise InputError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}", field="device")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} asked for, but torch sees no CUDA GPU here (torch "
                             f"{torch.__version__}); use 'cpu' or 'auto'", field="device")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise InputError(f"device {device!r} asked for, but torch sees {torch.cuda.device_count()} CUDA "
                             "device(s)", field="device")
    return device


def _device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"


def temperature_at(start: float, end: float | None, step: int, total: int) -> float:
    """Linear schedule from ``start`` to ``end`` over ``total`` steps (constant when ``end`` is None).

    A convex combination of two positive numbers, so it stays positive for every step (clamped to the range).
    """
    if start <= 0 or (end is not None and end <= 0):
        raise InputError(f"temperatures must be positive, got start={start}, end={end}", field="tau")
    if end is None or total <= 1:
        return float(start)
    frac = min(max(step / (total - 1), 0.0), 1.0)
    return float(start + (end - start) * frac)


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warmup over ``warmup`` × total steps, then linear decay to 0 at the last step."""
    n_warm = max(1, round(warmup * total)) if warmup > 0 else 0
    if step < n_warm:
        return (step + 1) / n_warm
    return max(0.0, (total - step) / max(1, total - n_warm))


def rerank_loss(scores: Any, labels: Any, mask: Any, *, objective: Objective = "kl", tau1: float = 2.0,
                tau2: float = 1.0) -> Any:
    """The reranker loss for a batch of queries, averaged over queries.

    Args:
        scores: (Q, C) float tensor of reranker logits f.
        labels: (Q, C) float tensor of rationale-BM25 scores s.
        mask: (Q, C) bool tensor, True where a candidate exists (queries may have fewer than C).
        objective: "kl" = KL(softmax(s/τ1) ‖ softmax(f/τ2)); "ce" = -log softmax(f/τ2)[argmax s].
        tau1: label temperature (> 0).
        tau2: logit temperature (> 0).

    Returns:
        A scalar tensor.
    """
    import torch

    if tau1 <= 0 or tau2 <= 0:
        raise InputError(f"temperatures must be positive, got tau1={tau1}, tau2={tau2}", field="tau")
    if scores.shape != labels.shape or scores.shape != mask.shape:
        raise InputError(f"shape mismatch: scores {tuple(scores.shape)}, labels {tuple(labels.shape)}, "
                         f"mask {tuple(mask.shape)}", field="labels")
    neg = torch.finfo(scores.dtype).min
    log_q = torch.log_softmax((scores / tau2).masked_fill(~mask, neg), dim=-1)
    if objective == "ce":
        best = labels.masked_fill(~mask, neg).argmax(dim=-1)
        return -log_q.gather(1, best[:, None]).squeeze(1).mean()
    if objective != "kl":
        raise InputError(f"objective must be 'kl' or 'ce', got {objective!r}", field="objective")
    log_p = torch.log_softmax((labels / tau1).masked_fill(~mask, neg), dim=-1)
    p = log_p.exp()
    kl = torch.where(mask, p * (log_p - log_q), torch.zeros_like(p)).sum(dim=-1)
    return kl.mean()


def _pad(queries: Sequence[RerankQuery], scores_flat: Any) -> tuple[Any, Any, Any]:
    """Flat per-pair logits → padded (Q, C) scores, labels and mask."""
    import torch

    width = max(len(q.ids) for q in queries)
    scores = scores_flat.new_zeros((len(queries), width))
    labels = torch.zeros((len(queries), width), dtype=scores_flat.dtype)
    mask = torch.zeros((len(queries), width), dtype=torch.bool)
    pos = 0
    for i, q in enumerate(queries):
        n = len(q.ids)
        scores[i, :n] = scores_flat[pos:pos + n]
        labels[i, :n] = torch.tensor(q.labels, dtype=scores_flat.dtype)
        mask[i, :n] = True
        pos += n
    # labels and mask are built on the CPU and moved once (not one small copy per query)
    return scores, labels.to(scores_flat.device), mask.to(scores_flat.device)


def _resolve_data(data: Any) -> tuple[list[RerankQuery], list[RerankQuery]]:
    if isinstance(data, str | Path):
        folder = Path(data)
        if not (folder / "train.jsonl").is_file():
            raise InputError("expected a folder with train.jsonl (and dev.jsonl)", path=folder)
        train = load_queries(folder / "train.jsonl")
        dev = load_queries(folder / "dev.jsonl") if (folder / "dev.jsonl").is_file() else []
        return train, dev
    if isinstance(data, tuple | list) and len(data) == 2:
        return list(data[0]), list(data[1])
    raise InputError("data must be a folder (train.jsonl, dev.jsonl) or a (train, dev) pair of query lists",
                     field="data")


class NoDevGainWarning(UserWarning):
    """The trained reranker ranks the dev queries no better than its untrained starting point."""


def _no_gain_message(start: dict[str, float], kept: dict[str, float], n_dev: int, steps: int) -> str:
    """Why a training run that did not beat its starting point on dev deserves a look, and what to try."""
    return (f"the trained reranker ranks the {n_dev} dev queries no better than its untrained start (top-1 "
            f"{start['top1']:.3f} -> {kept['top1']:.3f}, top-3 {start['top3']:.3f} -> {kept['top3']:.3f}) after "
            f"{steps} steps. A cross-encoder's fresh head needs a few hundred steps (more epochs or questions); "
            "a late-interaction reranker ranks well from the start; with few dev queries this can be noise.")


# ----------------------------------------------------------------------------- resume checkpoints


def _data_sha256(train: Sequence[RerankQuery], dev: Sequence[RerankQuery]) -> str:
    """One digest of the training and dev queries (order included): a checkpoint resumes only the same data."""
    digest = hashlib.sha256()
    for split, queries in (("train", train), ("dev", dev)):
        for q in queries:
            digest.update(json.dumps([split, q.to_dict()], ensure_ascii=False).encode())
    return digest.hexdigest()


def _save_checkpoint(folder: Path, model: Any, opt: Any, sched: Any, best_state: dict[str, Any] | None,
                     rng: random.Random, device: str, state: dict[str, Any]) -> None:
    """Everything a run needs to go on, swapped in as one folder: safetensors for tensors, JSON for the rest."""
    import torch
    from safetensors.torch import save_file

    opt_tensors, opt_meta = split_optimizer(opt, sched)
    randoms = {"torch_cpu": torch.get_rng_state()}
    if device.startswith("cuda"):
        randoms["torch_cuda"] = torch.cuda.get_rng_state(torch.device(device))
    version, words, gauss = rng.getstate()
    with atomic_dir(folder) as tmp:
        save_file(cpu_copies(model.state_dict()), str(tmp / "model.safetensors"))
        if best_state is not None:
            save_file(cpu_copies(best_state), str(tmp / "best.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(cpu_copies(randoms), str(tmp / "random.safetensors"))
        atomic_write_json(tmp / "state.json", {**state, "optimizer": opt_meta,
                                               "python_random": [version, list(words), gauss]})


def _load_checkpoint(folder: Path, model: Any, opt: Any, sched: Any, rng: random.Random, device: str,
                     expect: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """Restore a checkpoint into the fresh model, optimiser, schedule and random states; None when there is none.

    Raises:
        ArtifactError: the checkpoint was made from other data or settings, or lacks a tensor.
    """
    import torch
    from safetensors.torch import load_file

    if not (folder / "state.json").is_file():
        return None
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    for key, value in expect.items():
        if state.get(key) != value:
            theirs = state.get(key)
            if isinstance(value, dict) and isinstance(theirs, dict):
                theirs, value = ({k: v for k, v in theirs.items() if v != value.get(k)},
                                 {k: v for k, v in value.items() if v != theirs.get(k)})
            raise ArtifactError(f"{folder}: checkpoint was made with another {key} ({theirs!r} != {value!r}); use "
                                "a new output folder, or delete the checkpoint to start over")
    weights = load_file(str(folder / "model.safetensors"))
    missing = set(model.state_dict()) - set(weights)
    if missing:
        raise ArtifactError(f"{folder}: checkpoint lacks {len(missing)} model tensors, e.g. {sorted(missing)[0]}")
    model.load_state_dict(weights)
    best = load_file(str(folder / "best.safetensors")) if (folder / "best.safetensors").is_file() else None
    restore_optimizer(opt, sched, load_file(str(folder / "optimizer.safetensors")), state["optimizer"])
    randoms = load_file(str(folder / "random.safetensors"))
    torch.set_rng_state(randoms["torch_cpu"])
    if device.startswith("cuda") and "torch_cuda" in randoms:
        torch.cuda.set_rng_state(randoms["torch_cuda"], torch.device(device))
    version, words, gauss = state["python_random"]
    rng.setstate((version, tuple(words), gauss))
    return state, best


def train_reranker(data: Any, out_dir: str | Path, config: RerankTrainConfig | None = None, *,
                   progress: bool = True, on_no_gain: Callable[[str], None] | None = None,
                   on_step: Callable[[int, float], None] | None = None) -> Path:
    """Train a reranker (``config.kind``: cross-encoder or late interaction) and save it to ``out_dir``.

    A run interrupted after a checkpoint (``<out_dir>.checkpoint/``) continues from it when called again with the
    same data and settings (module docstring).

    Args:
        data: a folder with ``train.jsonl`` / ``dev.jsonl`` (from ``kardlite train reranker`` data building or
            :func:`kardlite.rerank.data.save_queries`), or a ``(train, dev)`` pair of RerankQuery lists.
        out_dir: output folder; replaced atomically at the end. ``<out_dir>.train_log.jsonl`` grows during
            training and is copied into the folder as ``train_log.jsonl``.
        config: training settings.
        progress: show a progress bar.
        on_no_gain: called with an explanation when the kept epoch does not beat the untrained start on dev
            (top-1, then top-3); None = issue it as a ``NoDevGainWarning``.
        on_step: called as ``on_step(step, loss)`` after every optimiser step (after any checkpoint).

    Returns:
        ``out_dir``, a folder that ``Reranker.load`` (torch) and ``export_reranker_onnx`` accept. Its
        ``reranker.json`` "training" records the dev metrics per epoch and ``dev_improved``.

    Raises:
        InputError: bad data or settings.
        ArtifactError: a checkpoint in the way that was made from other data or settings.
    """
    config = config or RerankTrainConfig()
    config.validate()
    try:
        import torch
    except ImportError:
        raise MissingExtraError("torch", "train") from None
    train, dev = _resolve_data(data)
    if not train:
        raise InputError("no training queries", field="data")
    overlap = {q.item_id for q in train} & {q.item_id for q in dev}
    if overlap:
        raise InputError(f"train and dev share {len(overlap)} questions (e.g. {sorted(overlap)[0]!r}); "
                         "split by question", field="data")
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(int(config.threads))
    rng = random.Random(config.seed)
    if config.max_train_queries and len(train) > config.max_train_queries:
        train = rng.sample(train, config.max_train_queries)
    if config.max_dev_queries and len(dev) > config.max_dev_queries:
        # its own generator: the training sample and the shuffles stay those of the uncapped run
        dev = random.Random(f"dev-{config.seed}").sample(dev, config.max_dev_queries)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = out_dir.with_name(out_dir.name + ".train_log.jsonl")
    ckpt_dir = out_dir.with_name(out_dir.name + CHECKPOINT_SUFFIX)
    log_lines = 0

    def log(row: dict[str, Any]) -> None:
        nonlocal log_lines
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        log_lines += 1

    reranker = Reranker.from_pretrained(config.base_model, max_length=config.max_length, lora=config.lora,
                                        num_layers=config.num_layers, seed=config.seed, kind=config.kind,
                                        dim=config.dim)
    model = reranker.model
    # before the optimiser is built, so that it holds the device's parameters (and its state lands there too)
    model.to(device)
    groups: dict[tuple[bool, bool], list[Any]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            no_decay = param.ndim < 2 or "LayerNorm" in name or name.endswith("bias")
            head = name.startswith("head.")
            groups.setdefault((head, no_decay), []).append(param)
    opt = torch.optim.AdamW([{"params": ps, "weight_decay": 0.0 if nd else config.weight_decay,
                              "lr": config.lr * (config.head_lr_mult if head else 1.0)}
                             for (head, nd), ps in groups.items()], lr=config.lr)
    steps_per_epoch = math.ceil(len(train) / config.queries_per_batch)
    total = steps_per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, config.warmup))
    expect = {"data_sha256": _data_sha256(train, dev),
              "config": {k: v for k, v in config.to_dict().items() if k not in _RESUME_FREE}}

    def dev_eval(epoch: int, step: int) -> dict[str, float]:
        model.eval()
        t1 = temperature_at(config.tau1, config.tau1_end, step, total)
        t2 = temperature_at(config.tau2, config.tau2_end, step, total)
        m = evaluate_queries(reranker, dev, batch_size=config.eval_batch_size, tau1=t1, tau2=t2)
        log({"event": "dev", "epoch": epoch, "step": step, **m})
        if progress:
            tqdm.write(f"dev after epoch {epoch}: top1 {m['top1']:.3f} top3 {m['top3']:.3f} "
                       f"ndcg {m['ndcg']:.3f} kl {m['kl']:.4f} (n={m['n']})")
        return m

    torch.manual_seed(config.seed)
    resumed = _load_checkpoint(ckpt_dir, model, opt, sched, rng, device, expect)
    if resumed is None:
        log_path.unlink(missing_ok=True)
        log({"event": "start", "device": device, "device_name": _device_name(device), "n_train": len(train),
             "n_dev": len(dev)})
        history = [dev_eval(0, 0)] if dev else []
        best_key, best_state, best_epoch = None, None, config.epochs
        step, first_epoch, position, order, elapsed = 0, 1, 0, None, 0.0
    else:
        state, best_state = resumed
        # the log keeps what the checkpoint had seen; the steps after it are trained (and logged) again
        lines = log_path.read_text(encoding="utf-8").splitlines(keepends=True) if log_path.is_file() else []
        if len(lines) < state["log_lines"]:
            raise ArtifactError(f"{log_path}: {len(lines)} lines, but the checkpoint in {ckpt_dir} saw "
                                f"{state['log_lines']}; delete the checkpoint to start over")
        log_path.write_text("".join(lines[:state["log_lines"]]), encoding="utf-8")
        log_lines = state["log_lines"]
        history, best_epoch, elapsed = state["history"], state["best_epoch"], state["elapsed_s"]
        best_key = tuple(state["best_key"]) if state["best_key"] is not None else None
        step, first_epoch, position, order = state["step"], state["epoch"], state["position"], state["order"]
        log({"event": "resume", "step": step, "device": device, "device_name": _device_name(device)})
        if progress:
            tqdm.write(f"resuming from step {step} of {total} ({ckpt_dir})")

    def checkpoint(epoch: int, position: int, order: list[int] | None) -> None:
        _save_checkpoint(ckpt_dir, model, opt, sched, best_state, rng, device, {
            **expect, "step": step, "epoch": epoch, "position": position, "order": order, "history": history,
            "best_key": best_key, "best_epoch": best_epoch, "elapsed_s": time.time() - started,
            "log_lines": log_lines})

    started = time.time() - elapsed
    bar = tqdm(total=total, initial=step, desc="train reranker", unit="step", disable=not progress)
    for epoch in range(first_epoch, config.epochs + 1):
        if order is None:
            order = list(range(len(train)))
            rng.shuffle(order)
        model.train()
        for start in range(position, len(order), config.queries_per_batch):
            batch = [train[i] for i in order[start:start + config.queries_per_batch]]
            tau1 = temperature_at(config.tau1, config.tau1_end, step, total)
            tau2 = temperature_at(config.tau2, config.tau2_end, step, total)
            enc = reranker.encode([(q.query, t) for q in batch for t in q.texts])
            flat = model(**{k: v.to(device) for k, v in enc.items()})
            scores, labels, mask = _pad(batch, flat)
            loss = rerank_loss(scores, labels, mask, objective=config.objective, tau1=tau1, tau2=tau2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            sched.step()
            loss_value = float(loss.detach())  # one device sync per step
            log({"event": "step", "epoch": epoch, "step": step, "loss": loss_value, "lr": sched.get_last_lr()[0],
                 "tau1": tau1, "tau2": tau2, "elapsed_s": round(time.time() - started, 2)})
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", epoch=epoch)
            following = start + config.queries_per_batch
            if config.checkpoint_every and step % config.checkpoint_every == 0 and following < len(order):
                checkpoint(epoch, following, order)
            if on_step is not None:
                on_step(step, loss_value)
        if dev:
            m = dev_eval(epoch, step)
            history.append(m)
            key = (m["top1"], m["top3"], -m["kl"])
            if best_key is None or key > best_key:
                best_key, best_epoch = key, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        position, order = 0, None
        if epoch < config.epochs:
            checkpoint(epoch + 1, 0, None)
    bar.close()
    if best_state is not None and best_epoch != config.epochs:
        model.load_state_dict(best_state)
    improved = None
    if dev:
        start, kept = history[0], history[best_epoch]
        improved = (kept["top1"], kept["top3"]) > (start["top1"], start["top3"])
        if not improved:
            message = _no_gain_message(start, kept, len(dev), total)
            if on_no_gain is None:
                warnings.warn(message, NoDevGainWarning, stacklevel=2)
            else:
                on_no_gain(message)
    # saved from the CPU whatever the training device: the folder is the same as a CPU run's
    model.to("cpu")
    model.eval()
    reranker.meta["training"] = {"config": config.to_dict(), "device": device, "device_name": _device_name(device),
                                 "n_train": len(train), "n_dev": len(dev),
                                 "n_dev_items": len({q.item_id for q in dev}), "steps": total,
                                 "best_epoch": best_epoch if dev else config.epochs, "dev": history,
                                 "dev_improved": improved,
                                 "train_seconds": round(time.time() - started, 1)}
    reranker.save(out_dir)
    shutil.copyfile(log_path, out_dir / "train_log.jsonl")
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return out_dir
