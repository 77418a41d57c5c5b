"""The demo student shipped as a trained LoRA adapter: its files, how they are written, checked and merged.

Training the demo student as long as it deserves does not fit the first run's budget (at most 10 minutes on 2
cores), so the repository can ship its LoRA weights instead, in ``kardlite/demo/adapter/``:

- ``adapter.safetensors``: the LoRA ``A`` and ``B`` matrices in fp16, named as PEFT saves them
  (``base_model.model.<module>.lora_A.weight``); at most :data:`MAX_ADAPTER_BYTES` (r16 on every linear layer of
  SmolLM2-135M: 4.9M parameters, ~9.8 MB).
- ``adapter.json``: the manifest: the base model and the sha256 of its weights file, the sha256 of each demo data
  file, the recipe (:class:`~kardlite.demo.recipe.StudentRecipe`: prompt mode, passages, every
  ``StudentTrainConfig`` field), the command line that reproduces it, the warm start if there was one, the LoRA
  layout (r, alpha, target modules), the trained student's record (``kardlite_student.json``: how to prompt and
  decode it), the weights file's sha256 and size, and the versions that made it.

``kardlite train demo-adapter`` (``kardlite.demo.train_adapter.make_demo_adapter``) trains the recipe with the demo
build's own stages and writes both; ``build_demo_bundle`` merges it into the base (PEFT ``merge_and_unload``) when
the base and data sha256s match this installation, and trains the student itself otherwise (or with ``--retrain``).

A warm start (e.g. the student first trained on OpenBookQA with ``kardlite train student``) is stacked, not
approximated: the warm run's adapter (rank r1, scale s1) and the demo training's adapter on top of its merged
model (r2, s2) add ``s1 B1 A1 + s2 B2 A2`` to each weight, which is one adapter of rank r1 + r2 with
``A = [A1; A2]``, ``B = [s1 B1 | s2 B2]`` and scale 1. Merging it into the base gives the warm-started student.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kardlite._io import atomic_dir, atomic_write_json, read_json, sha256_file
from kardlite.demo.recipe import COMMAND, NOT_LEARNT, StudentRecipe, lookup
from kardlite.errors import ArtifactError, InputError

MANIFEST = "adapter.json"
WEIGHTS = "adapter.safetensors"
FORMAT = "kardlite-demo-adapter"
FORMAT_VERSION = 1
MAX_ADAPTER_BYTES = 20_000_000  # what the repository takes (issue #23): 20 MB
_PREFIX = "base_model.model."  # PEFT's name for the wrapped model, in front of every module name
_SHA = re.compile(r"[0-9a-f]{64}")


class AdapterError(ArtifactError):
    """A shipped adapter that is corrupt, incomplete or of another format; names the file and the field."""

    def __init__(self, message: str, *, path: str | Path, field: str | None = None) -> None:
        self.path, self.field = str(path), field
        where = f"{path}, field '{field}'" if field else str(path)
        super().__init__(f"{where}: {message} (`kardlite demo --retrain` trains the student instead)")


def shipped_adapter_dir() -> Path:
    """Where the repository's adapter lives: ``kardlite/demo/adapter`` in the installed package."""
    from kardlite.demo import demo_dir

    return demo_dir() / "adapter"


# ----------------------------------------------------------------------------------------- what it depends on


def demo_data_sha256() -> dict[str, str]:
    """sha256 of each packaged demo data file (questions and passages), by file name."""
    from kardlite.demo import demo_dir

    return {p.name: sha256_file(p) for p in sorted(demo_dir().glob("*.jsonl"))}


def base_weights(student: str | None) -> dict[str, str]:
    """The base model an adapter goes on: its name, the weights file that defines it and that file's sha256.

    Args:
        student: None or ``smollm2`` (the packaged SmolLM2-135M-Instruct GGUF), a ``.gguf`` file or a local model
            folder (its ``*.safetensors``: one file's sha256, or for several the sha256 of their names and hashes).

    Raises:
        InputError: a hub id or a folder without safetensors weights (an adapter needs a base it can hash).
    """
    import hashlib

    from kardlite.distill.student import DEFAULT_STUDENT

    if student is None or student == DEFAULT_STUDENT:
        from kardlite._llama import packaged_smollm2

        gguf = packaged_smollm2()
        return {"student": DEFAULT_STUDENT, "file": gguf.name, "path": str(gguf), "sha256": sha256_file(gguf)}
    path = Path(student)
    if path.is_file() and path.suffix == ".gguf":
        return {"student": student, "file": path.name, "path": str(path), "sha256": sha256_file(path)}
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        raise InputError("a demo adapter needs a local base model with safetensors weights (or a .gguf)",
                         path=path, field="student")
    if len(files) == 1:
        return {"student": student, "file": files[0].name, "path": str(files[0]), "sha256": sha256_file(files[0])}
    listing = "".join(f"{f.name} {sha256_file(f)}\n" for f in files)
    return {"student": student, "file": "+".join(f.name for f in files), "path": str(path),
            "sha256": hashlib.sha256(listing.encode("utf-8")).hexdigest()}


def lora_bytes(student: str | None, r: int, targets: str | list[str] = "all-linear") -> int:
    """Bytes of the fp16 LoRA weights of rank ``r`` on ``student`` (counted on an empty 'meta' copy: no weights
    are loaded), to refuse an adapter over the limit before training it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from kardlite._hf import resolve

    config = AutoConfig.from_pretrained(resolve(student), trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=r, target_modules=targets, task_type="CAUSAL_LM"))
    return 2 * sum(p.numel() for name, p in model.named_parameters() if ".lora_" in name)


# ----------------------------------------------------------------------------------------- writing it


def _lora_state(run: Path) -> dict[str, Any]:
    """The LoRA weights of a finished run (its last checkpoint), named as PEFT saves them (no adapter name)."""
    from safetensors.torch import load_file

    ckpt = run / "checkpoint"
    if not (ckpt / "trainable.safetensors").is_file():
        raise ArtifactError(f"{ckpt}: no trainable.safetensors (not a finished training run of this kardlite)")
    state = load_file(str(ckpt / "trainable.safetensors"))
    out = {}
    for key, value in state.items():
        name = re.sub(r"\.(lora_[AB])\.default\.weight$", r".\1.weight", key)
        if name == key or not name.startswith(_PREFIX):
            raise ArtifactError(f"{ckpt}: {key} is not a LoRA weight; only LoRA runs make an adapter")
        out[name] = value.float()
    return out


def _module(key: str) -> str:
    return key[len(_PREFIX):].rsplit(".lora_", 1)[0]


def _finished_run(path: Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(run folder, run_info.json, manifest.json) of a finished training run given as its folder or ``model/``."""
    run = path.parent if path.name == "model" and not (path / "run_info.json").is_file() else path
    if not (run / "run_info.json").is_file() or not (run / "manifest.json").is_file():
        raise InputError("not a finished training run (run_info.json and manifest.json expected)", path=run)
    info, manifest = read_json(run / "run_info.json"), read_json(run / "manifest.json")
    state = read_json(run / "checkpoint" / "state.json") if (run / "checkpoint" / "state.json").is_file() else {}
    if state.get("step") != manifest.get("steps"):
        raise ArtifactError(f"{run}: the checkpoint is at step {state.get('step')}, the run ended at "
                            f"{manifest.get('steps')}: not its final weights")
    return run, info, manifest


def warm_start_run(path: str | Path, base: Mapping[str, str]) -> dict[str, Any]:
    """A warm start for the demo adapter: a finished LoRA run (``kardlite train student``, e.g. on OpenBookQA) on
    the same base model, given as its run folder or its ``model/``.

    Returns:
        ``run`` (as given), ``model`` (its merged student, which the demo training starts from), ``state`` (its
        LoRA weights), ``lora`` (r, alpha, targets), ``data`` (its examples file and sha256), ``steps``, ``config``.

    Raises:
        InputError: not a finished run, not a LoRA run, or trained on another base (sha256 named).
    """
    run, info, manifest = _finished_run(Path(path))
    cfg = info["config"]
    if not cfg.get("lora"):
        raise InputError("the warm start must be a LoRA run (its adapter is stacked under the demo's)", path=run,
                         field="lora")
    theirs = base_weights(cfg.get("student"))
    if theirs["sha256"] != base["sha256"]:
        raise InputError(f"the warm start was trained on another base ({theirs['file']} sha256 "
                         f"{theirs['sha256'][:12]}…, the demo's is {base['sha256'][:12]}…)", path=run, field="student")
    data = {k: manifest["data"].get(k) for k in ("examples", "examples_sha256", "n_examples", "n_questions")}
    if data["examples"]:  # the file's name: its sha256 says which data it was, a path says which machine it was on
        data["examples"] = Path(data["examples"]).name
    return {"run": str(path), "model": str(run / "model"), "state": _lora_state(run),
            "lora": {"r": cfg["lora_r"], "alpha": cfg["lora_alpha"], "targets": cfg["lora_targets"]},
            "data": data,
            "steps": manifest["steps"], "config": cfg}


def _stack(first: Mapping[str, Any], s1: float, r1: int, second: Mapping[str, Any], s2: float, r2: int
           ) -> dict[str, Any]:
    """One adapter of rank r1 + r2 and scale 1 that adds what both do: ``A = [A1; A2]``, ``B = [s1 B1 | s2 B2]``.
    A module that only one of them adapts gets zeros for the other's part."""
    import torch

    out = {}
    for module in sorted({_module(k) for k in (*first, *second)}):
        a, b = f"{_PREFIX}{module}.lora_A.weight", f"{_PREFIX}{module}.lora_B.weight"
        shape_in = (first[a] if a in first else second[a]).shape[1]
        shape_out = (first[b] if b in first else second[b]).shape[0]
        a1, b1 = first.get(a, torch.zeros(r1, shape_in)), first.get(b, torch.zeros(shape_out, r1))
        a2, b2 = second.get(a, torch.zeros(r2, shape_in)), second.get(b, torch.zeros(shape_out, r2))
        out[a] = torch.cat([a1, a2], dim=0)
        out[b] = torch.cat([s1 * b1, s2 * b2], dim=1)
    return out


def write_adapter(run: str | Path, out: str | Path, *, recipe: StudentRecipe, command: str,
                  base: Mapping[str, str] | None = None, warm: Mapping[str, Any] | None = None) -> Path:
    """Write the adapter of a finished demo training run (made with ``recipe``) and its manifest, atomically.

    Args:
        run: the training run folder (``train_student``'s ``out_dir``).
        out: the adapter folder, swapped in whole.
        recipe: the recipe the run was trained with (checked against its ``run_info.json``).
        command: the command line that reproduces it (checked to agree with the manifest before writing).
        base: ``base_weights`` of the recipe's student (computed when None).
        warm: the warm start (``warm_start_run``), stacked under the run's adapter.

    Raises:
        ArtifactError: the run does not match the recipe, is unfinished, holds more than LoRA weights, or the
            adapter is over :data:`MAX_ADAPTER_BYTES`.
    """
    import torch
    from safetensors.torch import save_file

    from kardlite._versions import package_versions

    run_dir, out = Path(run), Path(out)
    _, info, run_manifest = _finished_run(run_dir)
    expected = asdict(recipe.train_config(student=warm["model"] if warm else None))
    differ = sorted(k for k in set(expected) | set(info["config"])
                    if k not in NOT_LEARNT and expected.get(k) != info["config"].get(k))
    if differ:
        raise ArtifactError(f"{run_dir}: trained with other settings than the recipe ({', '.join(differ)})")
    # the manifest records how the run went (e.g. its max_batch_tokens), and the recipe for what it learnt
    spelled = recipe.to_json()
    spelled["train"].update({k: info["config"][k] for k in NOT_LEARNT if k in info["config"]})
    if not expected["lora"]:
        raise ArtifactError(f"{run_dir}: a full fine-tuning run has no adapter")
    if info["student"].get("kind") != "causal":
        raise ArtifactError(f"{run_dir}: only decoder (causal) students are merged by the demo build")
    base = base or base_weights(recipe.train_config().student)
    state = _lora_state(run_dir)
    r, alpha = expected["lora_r"], expected["lora_alpha"]
    if warm:
        w = warm["lora"]
        state = _stack(warm["state"], w["alpha"] / w["r"], w["r"], state, alpha / r, r)
        r = alpha = w["r"] + r
    tensors = {k: v.to(torch.float16).contiguous() for k, v in sorted(state.items())}
    modules = sorted({_module(k) for k in tensors})
    student = {**info["student"], "base": base["student"]}
    manifest: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command,
        "base": {k: base[k] for k in ("student", "file", "sha256")},
        "data": demo_data_sha256(),
        "examples": {"sha256": run_manifest["data"]["examples_sha256"],
                     "n_examples": run_manifest["data"]["n_examples"],
                     "n_questions": run_manifest["data"]["n_questions"]},
        "recipe": spelled,
        "warm_start": None if not warm else {
            "run": warm["run"], **warm["data"], "steps": warm["steps"], "lora": warm["lora"],
            "note": "this adapter stacks the warm-start run's LoRA and the demo training's on its merged model"},
        "lora": {"r": r, "alpha": alpha, "target_modules": sorted({m.rsplit(".", 1)[-1] for m in modules}),
                 "modules": modules, "dropout": 0.0, "task_type": "CAUSAL_LM",
                 "parameters": sum(v.numel() for v in tensors.values())},
        "student": student,
        "training": {"steps": run_manifest["steps"], **{k: run_manifest["metrics"].get(k) for k in
                                                        ("first_train_loss", "final_train_loss")}},
        "versions": package_versions("kardlite", "torch", "transformers", "peft"),
    }
    with atomic_dir(out) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        size = (tmp / WEIGHTS).stat().st_size
        if size > MAX_ADAPTER_BYTES:
            raise ArtifactError(f"{out / WEIGHTS}: {size / 1e6:.1f} MB, over the {MAX_ADAPTER_BYTES / 1e6:.0f} MB "
                                "limit; lower the LoRA rank")
        manifest["adapter"] = {"file": WEIGHTS, "sha256": sha256_file(tmp / WEIGHTS), "bytes": size,
                               "dtype": "float16", "tensors": len(tensors)}
        atomic_write_json(tmp / MANIFEST, manifest)
    return out


# ----------------------------------------------------------------------------------------- reading and merging


def read_manifest(folder: str | Path, *, check_weights: bool = True) -> dict[str, Any]:
    """Read and check an adapter's ``adapter.json`` (and, by default, that its weights file is the one it names).

    Raises:
        AdapterError: unreadable JSON, a missing or mistyped field, another format, or a weights file that is
            missing, too large or of another sha256; the message names the file and the field.
    """
    from kardlite.settings import InferenceSettings

    folder = Path(folder)
    path = folder / MANIFEST
    try:
        manifest = read_json(path)
    except InputError as err:
        message = str(err)
        for named in (f"{path}: ", f"{path}, "):  # AdapterError names the file itself
            message = message.removeprefix(named)
        raise AdapterError(message, path=path) from None
    if not isinstance(manifest, dict):
        raise AdapterError("expected a JSON object", path=path)

    def need(where: str, ok: Any, what: str) -> Any:
        try:
            value = lookup(manifest, where)
        except (KeyError, TypeError):
            raise AdapterError(f"missing (expected {what})", path=path, field=where) from None
        if not ok(value):
            raise AdapterError(f"expected {what}, got {value!r:.80}", path=path, field=where)
        return value

    def positive_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    need("format", lambda v: v == FORMAT, repr(FORMAT))
    need("format_version", lambda v: v == FORMAT_VERSION, f"{FORMAT_VERSION} (this kardlite's)")
    need("command", lambda v: isinstance(v, str) and v.startswith(COMMAND), f"a '{COMMAND} ...' line")
    need("base.student", lambda v: isinstance(v, str) and v, "the base model's name or path")
    need("base.sha256", lambda v: isinstance(v, str) and _SHA.fullmatch(v), "a sha256 (64 hex digits)")
    need("data", lambda v: isinstance(v, dict) and v and all(isinstance(s, str) and _SHA.fullmatch(s)
                                                             for s in v.values()),
         "a sha256 for each demo data file")
    need("lora.r", positive_int, "a positive integer")
    need("lora.alpha", lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v > 0, "a positive number")
    need("lora.modules", lambda v: isinstance(v, list) and v and all(isinstance(m, str) and m for m in v),
         "the adapted modules' names")
    need("student", lambda v: isinstance(v, dict) and v.get("kind") == "causal", "a causal student's record")
    need("warm_start", lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("run"), str)),
         "null or the warm start's record")
    need("adapter.file", lambda v: v == WEIGHTS, repr(WEIGHTS))
    need("adapter.sha256", lambda v: isinstance(v, str) and _SHA.fullmatch(v), "a sha256 (64 hex digits)")
    need("adapter.bytes", lambda v: positive_int(v) and v <= MAX_ADAPTER_BYTES,
         f"the weights' size, at most {MAX_ADAPTER_BYTES} bytes")
    try:
        StudentRecipe.from_json(manifest.get("recipe"))
    except InputError as err:
        raise AdapterError(str(err).split(": ", 1)[-1], path=path, field=err.field or "recipe") from None
    try:
        InferenceSettings.for_student(manifest["student"])
    except InputError as err:
        raise AdapterError(str(err), path=path, field="student.inference") from None
    if check_weights:
        weights = folder / WEIGHTS
        if not weights.is_file():
            raise AdapterError("the weights file it names is missing", path=weights, field="adapter.file")
        size = weights.stat().st_size
        if size != manifest["adapter"]["bytes"]:
            raise AdapterError(f"{size} bytes, the manifest says {manifest['adapter']['bytes']}", path=weights,
                               field="adapter.bytes")
        if sha256_file(weights) != manifest["adapter"]["sha256"]:
            raise AdapterError("its sha256 is not the manifest's (altered or truncated)", path=weights,
                               field="adapter.sha256")
    return manifest


def manifest_recipe(manifest: Mapping[str, Any]) -> StudentRecipe:
    """The recipe an adapter was trained with (from a manifest ``read_manifest`` returned)."""
    return StudentRecipe.from_json(manifest["recipe"])


def mismatches(manifest: Mapping[str, Any], folder: str | Path | None = None) -> list[str]:
    """How the adapter's base model and demo data differ from this installation's (empty: it fits), one line
    per differing sha256, naming the field and both values."""
    where = f"{Path(folder) / MANIFEST}" if folder is not None else MANIFEST
    problems = []
    try:
        base = base_weights(manifest["base"]["student"])
    except (InputError, ArtifactError) as err:
        return [f"base.student: {err}"]
    if base["sha256"] != manifest["base"]["sha256"]:
        problems.append(f"base.sha256: {where} has {manifest['base']['sha256'][:12]}…, the installed base model "
                        f"({base['path']}) has {base['sha256'][:12]}…")
    have = demo_data_sha256()
    for name in sorted(set(have) | set(manifest["data"])):
        want, got = manifest["data"].get(name), have.get(name)
        if want != got:
            problems.append(f"data.{name}: {where} has {want[:12] + '…' if want else 'no such file'}, the packaged "
                            f"demo data has {got[:12] + '…' if got else 'no such file'}")
    return problems


def merge_adapter(folder: str | Path, out: str | Path, *, manifest: Mapping[str, Any] | None = None) -> Path:
    """Merge an adapter into its base model and save the student folder a training run would have saved.

    The folder holds the merged weights (fp32 safetensors), the tokenizer and ``kardlite_student.json`` (the
    trained student's record from the manifest, with ``adapter``: its sha256 and command), so eval, export
    and the runtime treat it like ``train_student``'s ``model/``.

    Args:
        folder: the adapter folder (``adapter.safetensors`` + ``adapter.json``).
        out: the student folder to write (atomically).
        manifest: the adapter's manifest, already read and matched (``read_manifest`` and ``mismatches``); None:
            both are done here.

    Raises:
        AdapterError: a corrupt adapter, one that does not fit this installation's base model or demo data, or
            weights that do not fit the base model's layers.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    from kardlite.distill.student import STUDENT_FILE, load_student

    folder, out = Path(folder), Path(out)
    if manifest is None:
        manifest = read_manifest(folder)
        problems = mismatches(manifest, folder)
        if problems:
            raise AdapterError(f"does not fit this installation: {'; '.join(problems)}", path=folder / MANIFEST,
                               field=problems[0].split(":", 1)[0])
    lora = manifest["lora"]
    student = load_student(manifest["base"]["student"])
    model = get_peft_model(student.model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=0.0,
                                                     target_modules=list(lora["modules"]), task_type="CAUSAL_LM"))
    weights = folder / WEIGHTS
    params = dict(model.named_parameters())
    adapted = {name for name in params if ".lora_" in name}
    loaded = set()
    with torch.no_grad():
        for key, value in load_file(str(weights)).items():
            name = re.sub(r"\.(lora_[AB])\.weight$", r".\1.default.weight", key)
            if name not in adapted:
                raise AdapterError(f"{key} is no LoRA weight of this base model", path=weights, field="lora.modules")
            if params[name].shape != value.shape:
                raise AdapterError(f"{key} is {tuple(value.shape)}, the base model's layer needs "
                                   f"{tuple(params[name].shape)}", path=weights, field="lora.r")
            params[name].copy_(value.float())
            loaded.add(name)
    if adapted - loaded:
        raise AdapterError(f"{len(adapted - loaded)} LoRA weights missing, e.g. {sorted(adapted - loaded)[0]}",
                           path=weights, field="lora.modules")
    merged = model.merge_and_unload()
    info = {**manifest["student"], "base": manifest["base"]["student"],
            "adapter": {"sha256": manifest["adapter"]["sha256"], "command": manifest["command"],
                        "warm_start": (manifest.get("warm_start") or {}).get("run")}}
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        student.tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / STUDENT_FILE, info)
    return out
