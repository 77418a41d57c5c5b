"""Fine-tune a student on FT, RD or KARD examples: one training loop you can read top to bottom.

Order of things (nanoGPT-style): defaults (``StudentTrainConfig``) -> load examples and student -> split by
question -> tokenise (prompt via ``build_prompt``, loss on target tokens only) -> LoRA -> optimiser ->
resume from the last checkpoint if one exists -> one ``while`` loop (micro-batches, clip, step, log,
evaluate, checkpoint) -> merge LoRA and save a plain model + manifest.

Multi-GPU: ``accelerate launch -m kardlite.cli train student ...``; the loop shards micro-batches by
process and lets ``accelerate`` do the device placement and gradient sync. Nothing home-made.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kardlite._checkpoint import cpu_copies, restore_optimizer, split_optimizer
from kardlite._io import atomic_dir, atomic_write_json, atomic_write_text, sha256_file
from kardlite._versions import package_versions
from kardlite.data.split import split_by_question  # re-exported: its home is kardlite.data.split
from kardlite.distill.examples import read_examples
from kardlite.distill.student import STUDENT_FILE, Student, load_student
from kardlite.errors import ArtifactError, InputError
from kardlite.settings import DEFAULTS

CHECKPOINT = "checkpoint"
MANIFEST = "manifest.json"


@dataclass
class StudentTrainConfig:
    """Training defaults. Paper values (docs/method.md §5) unless a comment says otherwise.

    On a 2-core CPU a full paper run is hours; override ``max_steps``, ``batch_size``, ``max_source_tokens``.
    """

    # --- model ---
    student: str | None = None  # HF id or path; None = packaged SmolLM2-135M-Instruct
    # --- optimisation: AdamW, constant lr, 3 epochs, clip 1.0, seed 42 (paper) ---
    lr: float = 1e-4
    epochs: float = 3.0
    max_steps: int | None = None  # CPU override: stop after this many optimiser steps
    batch_size: int = 8  # micro-batch per process
    grad_accum: int = 1  # micro-batches per optimiser step
    weight_decay: float = 0.0
    clip: float = 1.0
    warmup_steps: int = 0  # the paper uses none: constant lr
    seed: int = 42
    # --- sequence budget: the same budget is used at inference (stored with the model) ---
    max_source_tokens: int = DEFAULTS.max_source_tokens  # the prompt budget is one setting, training and test
    # None: taken from the data, the smallest budget that cuts at most 1% of training targets (the rationale is
    # cut, never the answer line). Generation at test time gets a cap above the longest training target.
    max_target_tokens: int | None = None
    # --- throughput on a CPU (bench/train_speed.py measures each; none changes what is learnt) ---
    group_by_length: bool = True  # batches of similar length: less padding (order still seeded and shuffled)
    # Split a micro-batch so no forward pass holds more tokens: the same result in less memory. On two idle cores
    # (bench/train_speed.py, docs/results/train-speed.md) 1024 was as fast as 2048 (1.53x vs 1.52x the old
    # baseline's tokens/s) at 4.7 GB peak RSS instead of 6.3 GB; 512 keeps training near 3 GB at 1.40x.
    max_batch_tokens: int | None = 1024
    freeze_layers: int = 0  # train (LoRA or full) only decoder layers >= N: no backward through the lower ones
    # Decoders: put several short examples in one row (positions restart per example, attention stays within it)
    # instead of padding every row to the longest. Off by default: with length-grouped batches padding is ~1% and
    # the block-diagonal mask costs the fused causal attention kernel (bench/train_speed.py measures both).
    pack: bool = False
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more compute
    # --- adapter: LoRA on every linear projection of attention and MLP (not the LM head) ---
    lora: bool = True  # False = full fine-tuning
    lora_r: int = 16
    lora_alpha: int = 32
    # No dropout: on a CPU its masks over every adapter's input cost ~20% of the step (bench/train_speed.py) and
    # one epoch over a few thousand questions does not overfit.
    lora_dropout: float = 0.0
    lora_targets: str | list[str] = "all-linear"
    # --- bookkeeping ---
    dev_fraction: float = 0.05  # of questions (never of rationales) held out for the dev loss
    eval_every: int = 0  # dev loss every N steps; 0 = only at the end
    save_every: int = 25  # checkpoint every N steps (and at the end)
    snapshot_every: int = 0  # keep the trainable weights every N steps in snapshots/ (learning curves); 0 = never
    log_every: int = 1
    use_chat_template: bool | None = None  # None: the student's default (its chat template if it has one)
    # How the target writes the answer after "Answer:": the letter ("B"), the option's text, or both ("(B) text").
    answer_format: str = DEFAULTS.answer_format
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes recorded in the manifest


@dataclass
class _Feature:
    input_ids: list[int]
    labels: list[int]  # decoder: -100 over the prompt; seq2seq: target ids only
    item_id: str

    @property
    def n_target(self) -> int:
        return sum(1 for t in self.labels if t != -100)


# ----------------------------------------------------------------------------- data


def _encode_row(student: Student, row: dict[str, Any], cfg: StudentTrainConfig, stats: dict[str, int]
                ) -> tuple[list[int], str, list[int]]:
    """(prompt ids, target text, target ids) for one example, the prompt within ``max_source_tokens``."""
    from kardlite.kb.passage import Passage

    passages = [Passage(id=p["id"], title=p.get("title", ""), text=p["text"]) for p in row.get("passages") or []]
    prompt = student.prompt(row["item"], row["mode"], passages=passages, rationale=row.get("rationale"),
                            with_target=True, max_tokens=cfg.max_source_tokens, answer_format=cfg.answer_format)
    stats["trimmed_prompts"] += int(prompt.trimmed)
    target = prompt.target or ""
    tgt = student.encode_target(target)  # the rationale as plain text: its "<|im_end|>" stays text
    if student.kind == "seq2seq" and student.tokenizer.eos_token_id is not None:
        tgt = [*tgt, student.tokenizer.eos_token_id]
    # template markup as control tokens; question, options and passages as plain text
    return student.encode(prompt), target, tgt


def target_budget(lengths: list[int], max_cut: float = 0.01) -> int:
    """The smallest target budget that cuts at most ``max_cut`` of the targets (whose token counts are given).

    Example:
        >>> target_budget([10] * 99 + [50])
        10
        >>> target_budget([10] * 98 + [50, 60])
        50
    """
    if not lengths:
        return 1
    ordered = sorted(lengths)
    allowed = math.floor(max_cut * len(ordered))  # targets that may be cut
    return ordered[len(ordered) - 1 - allowed]


def _featurize(student: Student, encoded: tuple[list[int], str, list[int]], item_id: str, budget: int,
               stats: dict[str, int]) -> _Feature:
    src, target, tgt = encoded
    eos = tgt[-1:] if student.kind == "seq2seq" and student.tokenizer.eos_token_id is not None else []
    body = tgt[:len(tgt) - len(eos)]
    if len(tgt) > budget:
        # Cut the rationale, never the closing answer line: the student must learn to end with "Answer: X".
        stats["truncated_targets"] += 1
        cut = target.rfind("\nAnswer:")
        tail = student.encode_target(target[cut:]) if cut > 0 else []
        keep = max(budget - len(tail) - len(eos), 0)
        body = student.encode(target[:cut], special=False)[:keep] + tail if cut > 0 else body[:keep]
    tgt = body + eos
    if student.kind == "seq2seq":
        return _Feature(src, tgt, item_id)
    return _Feature(src + tgt, [-100] * len(src) + tgt, item_id)


def _pack_rows(feats: list[_Feature]) -> list[list[_Feature]]:
    """First-fit decreasing: examples into rows no longer than the longest example, so no row grows."""
    width = max(len(f.input_ids) for f in feats)
    rows: list[list[_Feature]] = []
    room: list[int] = []
    for f in sorted(feats, key=lambda f: len(f.input_ids), reverse=True):
        slot = next((i for i, left in enumerate(room) if left >= len(f.input_ids)), None)
        if slot is None:
            rows.append([])
            room.append(width)
            slot = len(rows) - 1
        rows[slot].append(f)
        room[slot] -= len(f.input_ids)
    return rows


def _collate(feats: list[_Feature], student: Student, pack: bool = False) -> dict[str, Any]:
    """Dynamic padding to the longest sequence of the micro-batch.

    Decoders are padded on the right and get no attention mask: under the causal mask a real token never sees the
    pads after it, so the mask adds nothing, and without one PyTorch's fused causal attention kernel runs (it keeps
    no L x L attention matrix for the backward pass). Positions count from 0 in every row.

    With ``pack`` (decoders only) a row holds several examples one after the other and ``position_ids`` restart at 0
    for each: transformers reads the restarts as packed sequences and keeps attention within each example. A
    row's last position predicts nothing across a boundary: every example starts with prompt tokens (label -100).
    """
    import torch

    pad = student.tokenizer.pad_token_id
    if pack and student.kind != "seq2seq":
        rows = _pack_rows(feats)
        n = max(sum(len(f.input_ids) for f in row) for row in rows)
        ids = torch.full((len(rows), n), pad, dtype=torch.long)
        labels = torch.full((len(rows), n), -100, dtype=torch.long)
        positions = torch.zeros((len(rows), n), dtype=torch.long)
        for i, row in enumerate(rows):
            at = 0
            for f in row:
                ids[i, at:at + len(f.input_ids)] = torch.tensor(f.input_ids)
                labels[i, at:at + len(f.labels)] = torch.tensor(f.labels)
                positions[i, at:at + len(f.input_ids)] = torch.arange(len(f.input_ids))
                at += len(f.input_ids)
            # pads continue the last example's positions: they join it, after its tokens, and are never attended to
            last = len(row[-1].input_ids)
            positions[i, at:] = torch.arange(last, last + n - at)
        return {"input_ids": ids, "labels": labels, "position_ids": positions}
    n = max(len(f.input_ids) for f in feats)
    ids = torch.full((len(feats), n), pad, dtype=torch.long)
    if student.kind == "seq2seq":
        mask = torch.zeros((len(feats), n), dtype=torch.long)
        m = max(len(f.labels) for f in feats)
        labels = torch.full((len(feats), m), -100, dtype=torch.long)
        for i, f in enumerate(feats):
            ids[i, : len(f.input_ids)] = torch.tensor(f.input_ids)
            mask[i, : len(f.input_ids)] = 1
            labels[i, : len(f.labels)] = torch.tensor(f.labels)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    labels = torch.full((len(feats), n), -100, dtype=torch.long)
    for i, f in enumerate(feats):
        ids[i, : len(f.input_ids)] = torch.tensor(f.input_ids)
        labels[i, : len(f.labels)] = torch.tensor(f.labels)
    return {"input_ids": ids, "labels": labels}


def _unwrap(model: Any) -> Any:
    """The transformers model inside PEFT and accelerate wrappers."""
    base = model
    while hasattr(base, "get_base_model") or hasattr(base, "module"):
        base = base.get_base_model() if hasattr(base, "get_base_model") else base.module
    return base


def _loss_sum(model: Any, batch: dict[str, Any], kind: str) -> tuple[Any, int]:
    """Summed token cross-entropy over target tokens, and the number of target tokens.

    For a decoder the vocabulary projection runs only at the positions that predict a target token: the decoder's
    hidden states are gathered there first. A prompt position's logits would be thrown away, and over a 49k
    vocabulary they are the largest tensors of the step (fp32 logits, their softmax and its gradient).
    """
    import torch.nn.functional as F

    labels = batch["labels"]
    if kind == "seq2seq":
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).logits
        n_tokens = int((labels != -100).sum())
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100,
                               reduction="sum"), n_tokens
    base = _unwrap(model)
    targets = labels[:, 1:]
    where = targets != -100  # hidden state at t predicts token t + 1
    hidden = base.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                                position_ids=batch.get("position_ids"), use_cache=False).last_hidden_state
    logits = base.get_output_embeddings()(hidden[:, :-1][where]).float()
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:  # Gemma-style soft cap, as the model's own forward applies it
        logits = (logits / cap).tanh() * cap
    return F.cross_entropy(logits, targets[where], reduction="sum"), int(where.sum())


def _dev_loss(model: Any, feats: list[_Feature], student: Student, batch_size: int, device: Any) -> float | None:
    import torch

    if not feats:
        return None
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(feats), batch_size):
            batch = {k: v.to(device) for k, v in _collate(feats[i:i + batch_size], student).items()}
            loss, n = _loss_sum(model, batch, student.kind)
            total, count = total + float(loss), count + int(n)
    model.train()
    return total / max(count, 1)


def _micro_batches(lengths: list[int], epoch: int, cfg: StudentTrainConfig) -> list[list[int]]:
    """The fixed, seeded order of micro-batches for one epoch (so a resumed run sees the same data).

    With ``group_by_length``, the shuffled examples are taken in chunks of 50 micro-batches, each chunk sorted by
    length and cut into micro-batches, and the micro-batches shuffled again: batches hold rows of similar length
    (little padding) while the data order stays random.
    """
    rng = random.Random(cfg.seed * 1000 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not cfg.group_by_length:
        return [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    chunk = cfg.batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: lengths[i])
        batches += [part[i:i + cfg.batch_size] for i in range(0, len(part), cfg.batch_size)]
    rng.shuffle(batches)
    return batches


def _split_by_tokens(feats: list[_Feature], max_tokens: int | None) -> list[list[_Feature]]:
    """Cut a micro-batch (sorted by length) into forward passes of at most ``max_tokens`` padded tokens each."""
    if not max_tokens:
        return [feats]
    parts: list[list[_Feature]] = []
    current: list[_Feature] = []
    for f in sorted(feats, key=lambda f: len(f.input_ids)):
        longest = max([len(f.input_ids), *(len(g.input_ids) for g in current)])
        if current and longest * (len(current) + 1) > max_tokens:
            parts.append(current)
            current = []
        current.append(f)
    if current:
        parts.append(current)
    return parts


def _freeze_lower_layers(model: Any, n: int) -> None:
    """Stop gradients below decoder layer ``n`` (LoRA or full fine-tuning): backward then ends there."""
    import re as _re

    pattern = _re.compile(r"\.layers\.(\d+)\.")
    for name, param in model.named_parameters():
        match = pattern.search(name)
        if param.requires_grad and (match is None or int(match.group(1)) < n):
            param.requires_grad_(False)


# ----------------------------------------------------------------------------- checkpoints


def _trainable_state(model: Any) -> dict[str, Any]:
    return {k: v.detach().cpu() for k, v in model.named_parameters() if v.requires_grad}


def _save_checkpoint(out: Path, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any]) -> None:
    """Model (trainable part), optimiser, scheduler and step, swapped in as one directory (atomic); safetensors
    and JSON only, so that resuming loads no pickles."""
    from safetensors.torch import save_file

    opt_tensors, opt_meta = split_optimizer(optimizer, scheduler)
    with atomic_dir(out / CHECKPOINT) as tmp:
        save_file(cpu_copies(_trainable_state(model)), str(tmp / "trainable.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        atomic_write_json(tmp / "state.json", {**state, "optimizer": opt_meta})


def _load_checkpoint(out: Path, model: Any, optimizer: Any, scheduler: Any, expect: dict[str, Any]
                     ) -> dict[str, Any] | None:
    from safetensors.torch import load_file

    ckpt = out / CHECKPOINT
    if not (ckpt / "state.json").is_file():
        return None
    if (ckpt / "trainable.pt").is_file():
        raise ArtifactError(f"{ckpt}: an older kardlite's checkpoint (torch pickle files, "
                            "which kardlite no longer loads); delete it to start this run over")
    state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    opt_meta = state.pop("optimizer")
    # A setting added to the config after the checkpoint was written is not in it: the checkpoint predates it
    # and ran with that setting's default, so only the settings the checkpoint records are compared.
    saved = state.get("config", {})
    expect = {**expect, "config": {k: v for k, v in expect["config"].items() if k in saved}} if "config" in expect \
        else expect
    for key, value in expect.items():
        if state.get(key) != value:
            raise ArtifactError(f"{ckpt}: checkpoint was made with another {key} ({state.get(key)!r} != {value!r}); "
                                "use a new output dir, or delete the checkpoint to start over")
    weights = load_file(str(ckpt / "trainable.safetensors"))
    missing = set(_trainable_state(model)) - set(weights)
    if missing:
        raise ArtifactError(f"{ckpt}: checkpoint lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[0]}")
    model.load_state_dict(weights, strict=False)
    restore_optimizer(optimizer, scheduler, load_file(str(ckpt / "optimizer.safetensors")), opt_meta)
    return state


SNAPSHOTS = "snapshots"


def _save_snapshot(out: Path, model: Any, step: int) -> None:
    """The trainable weights at ``step`` (LoRA adapters: a few MB), for a learning curve (``snapshot_model``)."""
    from safetensors.torch import save_file

    with atomic_dir(out / SNAPSHOTS / f"step-{step:06d}") as tmp:
        save_file({k: v.contiguous() for k, v in _trainable_state(model).items()}, str(tmp / "trainable.safetensors"))


def list_snapshots(run_dir: str | Path) -> list[int]:
    """Steps with a saved snapshot in a training run, ascending."""
    folder = Path(run_dir) / SNAPSHOTS
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("step-*") if (p / "trainable.safetensors").is_file())


def snapshot_model(run_dir: str | Path, step: int, out_dir: str | Path) -> Path:
    """A plain merged student folder (like ``model/``) from the snapshot at ``step`` of a run; reused if present.

    Raises:
        ArtifactError: no such snapshot, or a run without ``run_info.json``.
    """
    import torch
    from safetensors.torch import load_file

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if (out_dir / STUDENT_FILE).is_file():
        return out_dir
    weights = run_dir / SNAPSHOTS / f"step-{step:06d}" / "trainable.safetensors"
    if not weights.is_file() or not (run_dir / "run_info.json").is_file():
        raise ArtifactError(f"{weights}: no snapshot (train with snapshot_every) or no run_info.json beside it")
    run = json.loads((run_dir / "run_info.json").read_text(encoding="utf-8"))
    cfg = StudentTrainConfig(**run["config"])
    student = load_student(cfg.student, use_chat_template=cfg.use_chat_template)
    model = student.model
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        task = "SEQ_2_SEQ_LM" if student.kind == "seq2seq" else "CAUSAL_LM"
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                                 target_modules=cfg.lora_targets, task_type=task))
    state = load_file(str(weights))
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in state.items():
            params[name].copy_(value)
    if cfg.lora:
        model = model.merge_and_unload()
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        student.tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / STUDENT_FILE, {**run["student"], "snapshot_step": step})
    return out_dir


def _write_curve(out: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_json(out / "loss_curve.json", history)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["step", "epoch", "lr", "train_loss", "dev_loss", "seconds", "tokens",
                                             "padded_tokens", "target_tokens"],
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(out / "loss_curve.csv", buf.getvalue())


def _versions() -> dict[str, str]:
    return package_versions("kardlite", "torch", "transformers", "peft", "accelerate")


# ----------------------------------------------------------------------------- the loop


def train_student(examples_path: str | Path, out_dir: str | Path, config: StudentTrainConfig | None = None, *,
                  on_step: Callable[[int, float], None] | None = None) -> Path:
    """Fine-tune a student on one example file and save a plain merged model.

    Re-running with the same ``out_dir`` resumes from its last checkpoint (same data and config required);
    a finished run is not trained again.

    Args:
        examples_path: JSONL from ``kardlite distill build`` (one mode).
        out_dir: run directory: ``checkpoint/``, ``loss_curve.{json,csv}``, ``model/``, ``manifest.json``.
        config: hyper-parameters (defaults: the paper's).
        on_step: called as ``on_step(step, train_loss)`` after every optimiser step (after any checkpoint).

    Returns:
        The saved model directory (``out_dir/model``): safetensors + tokenizer + ``kardlite_student.json``.

    Example:
        >>> cfg = StudentTrainConfig(max_steps=50, batch_size=8, max_source_tokens=384)
        >>> train_student("runs/obqa/kard.jsonl", "runs/obqa/kard-student", cfg)  # doctest: +SKIP
    """
    import torch
    from accelerate import Accelerator

    cfg = config or StudentTrainConfig()
    check_config(cfg)
    out = Path(out_dir)
    if (out / MANIFEST).is_file() and (out / "model" / "config.json").is_file():
        return out / "model"  # finished earlier
    out.mkdir(parents=True, exist_ok=True)

    # data and student
    rows = read_examples(examples_path)
    mode = rows[0]["mode"]
    examples_sha = sha256_file(examples_path)
    torch.manual_seed(cfg.seed)
    student = load_student(cfg.student, use_chat_template=cfg.use_chat_template)
    train_rows, dev_rows = split_by_question(rows, cfg.dev_fraction, cfg.seed)
    stats = {"trimmed_prompts": 0, "truncated_targets": 0}
    train_enc = [_encode_row(student, r, cfg, stats) for r in train_rows]
    dev_enc = [_encode_row(student, r, cfg, {"trimmed_prompts": 0}) for r in dev_rows]
    target_lengths = [len(e[2]) for e in train_enc]
    budget = cfg.max_target_tokens or target_budget(target_lengths)
    train_feats = [_featurize(student, e, r["item_id"], budget, stats) for e, r in zip(train_enc, train_rows,
                                                                                        strict=True)]
    dev_feats = [_featurize(student, e, r["item_id"], budget, {"truncated_targets": 0})
                 for e, r in zip(dev_enc, dev_rows, strict=True)]
    lengths = [len(f.input_ids) for f in train_feats]

    # model: LoRA adapters (default) or every weight
    model = student.model
    if cfg.lora:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as err:
            from kardlite.errors import MissingExtraError

            raise MissingExtraError("peft", "train") from err
        task = "SEQ_2_SEQ_LM" if student.kind == "seq2seq" else "CAUSAL_LM"
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                                 target_modules=cfg.lora_targets, task_type=task))
    if cfg.freeze_layers:
        _freeze_lower_layers(model, cfg.freeze_layers)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)

    accelerator = Accelerator()
    # The scheduler stays unwrapped: it is one lambda per optimiser step, whatever the process count.
    model, optimizer = accelerator.prepare(model, optimizer)
    world, rank = accelerator.num_processes, accelerator.process_index
    per_step = cfg.batch_size * cfg.grad_accum * world  # examples per optimiser step
    steps_per_epoch = max(1, math.ceil(len(train_feats) / per_step))
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))

    # resume
    # A checkpoint resumes only the same data and the same hyper-parameters; the run length may change.
    # Packing and the per-pass token cap change how the same loss is computed, not what is learnt: a run may resume
    # with either switched (a run started under the old 2048 default resumes under the new one).
    free = {"max_steps", "epochs", "save_every", "eval_every", "log_every", "extra", "snapshot_every", "pack",
            "max_batch_tokens"}
    expect = {"examples_sha256": examples_sha, "config": {k: v for k, v in asdict(cfg).items() if k not in free}}
    state = _load_checkpoint(out, accelerator.unwrap_model(model), optimizer, scheduler, expect)
    if state is None:
        state = {**expect, "step": 0, "history": []}
    elif accelerator.is_main_process:
        print(f"resuming from step {state['step']} of {total_steps}")
    history: list[dict[str, Any]] = state["history"]

    # How to prompt and decode this student, used by eval, export and the runtime unless overridden: the same
    # source budget and passage count as in training, and a generation cap above the longest training target.
    info = {"kind": student.kind, "mode": mode, "base": student.name, "max_source_tokens": cfg.max_source_tokens,
            "max_target_tokens": budget, "max_new_tokens": max(target_lengths, default=budget) + 16,
            "n_docs": _n_docs(rows), "use_chat_template": student.use_chat_template,
            "answer_format": cfg.answer_format}
    info["inference"] = _inference_settings(info)
    if accelerator.is_main_process:
        atomic_write_json(out / "run_info.json", {"student": info, "config": asdict(cfg)})

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=state["step"], desc=f"train {mode}", disable=not accelerator.is_main_process)
    started = time.time()
    while state["step"] < total_steps:
        step = state["step"]
        epoch, slot = divmod(step, steps_per_epoch)
        batches = _micro_batches(lengths, epoch, cfg)
        window = batches[slot * cfg.grad_accum * world:(slot + 1) * cfg.grad_accum * world]
        mine = window[rank::world] or window[:1]  # the last window of an epoch may be short
        feats = [[train_feats[i] for i in mb] for mb in mine]
        # Normalise by the target tokens of the whole window, so accumulation equals one big batch.
        n_window = sum(1 for mb in feats for f in mb for t in f.labels if t != -100)
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout noise depends on the step only: exact resume
        loss_total = 0.0
        passes = [part for mb in feats for part in _split_by_tokens(mb, cfg.max_batch_tokens)]
        n_real = sum(len(f.input_ids) for part in passes for f in part)
        n_padded = 0
        for j, part in enumerate(passes):
            batch = {k: v.to(accelerator.device) for k, v in _collate(part, student, cfg.pack).items()}
            n_padded += batch["input_ids"].numel()
            sync = j == len(passes) - 1
            with accelerator.no_sync(model) if not sync else contextlib.nullcontext():
                loss, _ = _loss_sum(model, batch, student.kind)
                loss = loss / max(n_window, 1)
                accelerator.backward(loss)
            loss_total += float(loss.detach())
        if cfg.clip:
            accelerator.clip_grad_norm_(params, cfg.clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_total:.3f}")

        record: dict[str, Any] = {"step": step + 1, "epoch": round((step + 1) / steps_per_epoch, 4),
                                  "lr": scheduler.get_last_lr()[0], "train_loss": round(loss_total, 5),
                                  "seconds": round(time.time() - started, 2), "tokens": n_real,
                                  "padded_tokens": n_padded, "target_tokens": n_window}
        last = state["step"] == total_steps
        if (cfg.eval_every and state["step"] % cfg.eval_every == 0) or last:
            record["dev_loss"] = _dev_loss(model, dev_feats, student, cfg.batch_size, accelerator.device)
        history.append(record)
        if accelerator.is_main_process:
            if state["step"] % cfg.log_every == 0 or last:
                _write_curve(out, history)
            if state["step"] % cfg.save_every == 0 or last:
                _save_checkpoint(out, accelerator.unwrap_model(model), optimizer, scheduler, state)
            if cfg.snapshot_every and (state["step"] % cfg.snapshot_every == 0 or last):
                _save_snapshot(out, accelerator.unwrap_model(model), state["step"])
        if on_step is not None:
            on_step(state["step"], loss_total)
    bar.close()

    # save a plain model: LoRA merged into the weights, safetensors, tokenizer, how to prompt it
    accelerator.wait_for_everyone()
    final = accelerator.unwrap_model(model)
    if cfg.lora:
        final = final.merge_and_unload()
    if accelerator.is_main_process:
        train_losses = [h["train_loss"] for h in history]
        with atomic_dir(out / "model") as tmp:
            final.save_pretrained(tmp, safe_serialization=True)
            student.tokenizer.save_pretrained(tmp)
            atomic_write_json(tmp / STUDENT_FILE, info)
        manifest = {
            "student": info,
            "config": asdict(cfg),
            "data": {"examples": str(examples_path), "examples_sha256": examples_sha, "n_examples": len(rows),
                     "n_train": len(train_feats), "n_dev": len(dev_feats),
                     "n_questions": len({r["item_id"] for r in rows}),
                     "n_dev_questions": len({r["item_id"] for r in dev_rows}), **stats},
            "steps": state["step"],
            "steps_per_epoch": steps_per_epoch,
            "metrics": {"final_train_loss": train_losses[-1] if train_losses else None,
                        "first_train_loss": train_losses[0] if train_losses else None,
                        "final_dev_loss": history[-1].get("dev_loss") if history else None,
                        "seconds_this_session": round(time.time() - started, 1)},
            "versions": _versions(),
            "world_size": world,
        }
        atomic_write_json(out / MANIFEST, manifest)
    return out / "model"


def _inference_settings(info: dict[str, Any]) -> dict[str, Any]:
    """The InferenceSettings this student is evaluated and shipped with (kardlite.settings): its mode, budget,
    passage count and generation cap; the rest are the defaults."""
    from kardlite.settings import InferenceSettings

    return InferenceSettings.for_student(info).to_dict()


def _n_docs(rows: list[dict[str, Any]]) -> int | None:
    """Passages per training prompt (the retrieval k the examples were built with), for knowledge modes."""
    ks = [len(r.get("passages") or []) for r in rows if r["mode"] in ("kard", "ka-ft")]
    return max(ks) if ks else None


def check_config(cfg: StudentTrainConfig) -> None:
    """Reject settings that cannot work, with the field named."""
    for name in ("lr", "batch_size", "grad_accum", "max_source_tokens", "save_every"):
        if getattr(cfg, name) <= 0:
            raise InputError(f"must be positive, got {getattr(cfg, name)}", field=name)
    for name in ("max_target_tokens", "max_batch_tokens"):
        if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
            raise InputError(f"must be positive (or None), got {getattr(cfg, name)}", field=name)
    if cfg.freeze_layers < 0:
        raise InputError(f"must be >= 0, got {cfg.freeze_layers}", field="freeze_layers")
    if cfg.max_steps is not None and cfg.max_steps <= 0:
        raise InputError(f"must be positive, got {cfg.max_steps}", field="max_steps")
    if not 0 <= cfg.dev_fraction < 1:
        raise InputError(f"must be in [0, 1), got {cfg.dev_fraction}", field="dev_fraction")
