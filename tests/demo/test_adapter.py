"""The shipped demo adapter (kardlite/demo/adapter.py): the command recorded in its manifest reproduces the manifest,
a merged adapter is the trained student, a corrupt or mismatched one is named, and the size stays in bounds.

The slow tests make a real adapter with ``kardlite train demo-adapter`` on the tiny random llama (2 LoRA steps on a
few demo train questions, over a BM25-only knowledge base of the demo passages), then merge it with PEFT.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from kardlite._io import read_json
from kardlite.cli import app
from kardlite.demo import adapter as ad
from kardlite.demo.build import _same_student, _stage_student_adapter, _student_plan
from kardlite.demo.recipe import RECIPE_OPTIONS, STUDENT_SETTINGS, StudentRecipe, command_line, lookup
from kardlite.demo.train_adapter import check_command, make_demo_adapter, parse_adapter_command
from kardlite.errors import ArtifactError, InputError

N_QUESTIONS = 4  # demo train questions the tiny adapter is trained on
TRAIN = ["--steps", "2", "--batch-size", "2", "--lr", "0.01"]  # a large lr: the adapter must visibly move the model


def _run(args: list[str]) -> Any:
    return CliRunner().invoke(app, args, prog_name="kardlite")


def _work(root: Path) -> Path:
    """A work folder the adapter command reuses: a BM25-only KB of the demo passages and the rationales of the first
    few demo train questions (the stages take what they find)."""
    from kardlite._io import write_jsonl
    from kardlite.demo import demo_passages, demo_questions
    from kardlite.kb import KBConfig, KnowledgeBase

    work = root / "work"
    KnowledgeBase.build(demo_passages(), work / "kb", config=KBConfig(dense=None), progress=False)
    write_jsonl(work / "rationales.jsonl", [
        {"item_id": it.id, "rationale_index": i, "text": text, "kept": True}
        for it in demo_questions("train")[:N_QUESTIONS] for i, text in enumerate(it.meta["rationales"])])
    return work


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> SimpleNamespace:
    """An adapter made by the real command on the tiny llama, and the training run it came from."""
    root = tmp_path_factory.mktemp("adapter")
    work = _work(root)
    result = _run(["train", "demo-adapter", "--student", str(tiny_llama_dir), *TRAIN, "--work", str(work),
                   "--out", str(root / "adapter"), "--quiet"])
    assert result.exit_code == 0, (result.output, result.exception)
    manifest = ad.read_manifest(root / "adapter")
    run = work / f"student-{ad.manifest_recipe(manifest).key('')}"
    return SimpleNamespace(root=root, work=work, out=root / "adapter", run=run, manifest=manifest,
                           student=tiny_llama_dir)


def _copy(made: SimpleNamespace, tmp_path: Path, edit: Any = None) -> Path:
    """A copy of the made adapter, its manifest edited by ``edit(manifest)``."""
    out = tmp_path / "adapter"
    shutil.copytree(made.out, out)
    if edit is not None:
        manifest = json.loads((out / ad.MANIFEST).read_text())
        edit(manifest)
        (out / ad.MANIFEST).write_text(json.dumps(manifest))
    return out


def _logits(folder: Path, text: str) -> Any:
    import torch

    from kardlite.distill.student import load_student

    student = load_student(folder)
    with torch.no_grad():
        return student.model(torch.tensor([student.encode(text)])).logits[0]


# ------------------------------------------------------------------------------------------- command <-> manifest


def test_the_recorded_command_reproduces_the_recipe() -> None:
    recipe = StudentRecipe(mode="rd", settings={**STUDENT_SETTINGS, "lr": 1e-3, "max_steps": 200,
                                                "answer_format": "both", "freeze_layers": 8})
    command = command_line(recipe, warm_start="runs/obqa/kard")
    assert command.startswith("kardlite train demo-adapter ") and "--lr 0.001" in command
    parsed, warm = parse_adapter_command(command)
    assert parsed.to_json() == recipe.to_json() and warm == "runs/obqa/kard"
    manifest = {"command": command, "recipe": recipe.to_json(), "warm_start": {"run": "runs/obqa/kard"}}
    assert check_command(manifest) == []
    # each side edited in turn: the field that differs is named
    other = copy.deepcopy(manifest)
    other["recipe"]["train"]["lr"] = 5e-4
    assert check_command(other) == ["recipe.train.lr: the command gives 0.001, the manifest has 0.0005"]
    other = dict(manifest, command=command.replace("--steps 200", "--steps 100"))
    assert [p.split(":")[0] for p in check_command(other)] == ["recipe.train.max_steps"]
    other = dict(manifest, command=command.replace(" --warm-start runs/obqa/kard", ""))
    assert [p.split(":")[0] for p in check_command(other)] == ["warm_start.run"]
    # a setting the command has no option for is caught too: the command would not reproduce it
    other = copy.deepcopy(manifest)
    other["recipe"]["train"]["weight_decay"] = 0.1
    assert [p.split(":")[0] for p in check_command(other)] == ["recipe.train.weight_decay"]
    # ... but not one that changes how the run goes, not what it learns (a throughput default changed since)
    other = copy.deepcopy(manifest)
    other["recipe"]["train"].update(max_batch_tokens=4096, save_every=1, pack=True)
    assert check_command(other) == []
    with pytest.raises(InputError, match=r"does not parse.*--no-such"):
        parse_adapter_command(command + " --no-such 1")


def test_a_recipe_the_command_cannot_reproduce_is_refused_before_training(tmp_path: Path) -> None:
    # epochs has no option in the command: an adapter trained with it could not be reproduced from its manifest
    recipe = StudentRecipe(settings={**STUDENT_SETTINGS, "epochs": 5.0})
    with pytest.raises(InputError, match=r"recipe\.train\.epochs: the command gives 3\.0") as err:
        make_demo_adapter(tmp_path / "adapter", recipe=recipe, work=tmp_path / "never", progress=False)
    assert err.value.field == "command"
    assert not (tmp_path / "never").exists() and not (tmp_path / "adapter").exists()


def test_the_shipped_adapter_agrees_with_its_command() -> None:
    folder = ad.shipped_adapter_dir()
    if not (folder / ad.MANIFEST).is_file():  # none shipped: the full build trains the default recipe, as before
        assert not (folder / ad.WEIGHTS).exists(), "adapter weights without their adapter.json"
        plan = _student_plan(None, retrain=False, progress=False)
        assert plan.adapter is None and plan.recipe.is_default()
        return
    manifest = ad.read_manifest(folder)
    assert check_command(manifest) == []
    assert manifest["adapter"]["bytes"] <= ad.MAX_ADAPTER_BYTES
    warm = manifest["warm_start"]
    assert warm is None or not Path(warm["examples"]).is_absolute(), "a path of the machine that made it"


@pytest.mark.slow
def test_made_adapter_command_and_manifest_agree(made: SimpleNamespace) -> None:
    manifest = made.manifest
    recipe, warm = parse_adapter_command(manifest["command"])
    assert warm is None and manifest["warm_start"] is None
    spelled = recipe.to_json()
    for name, where in RECIPE_OPTIONS.items():  # each option of the command equals the manifest's setting
        assert lookup(spelled, where) == lookup(manifest["recipe"], where), name
    assert spelled == manifest["recipe"] and check_command(manifest) == []
    assert manifest["recipe"]["train"]["lr"] == 0.01 and manifest["recipe"]["train"]["max_steps"] == 2
    assert manifest["base"]["sha256"] == ad.base_weights(str(made.student))["sha256"]
    assert manifest["data"] == ad.demo_data_sha256() and manifest["examples"]["n_questions"] == N_QUESTIONS
    assert manifest["lora"]["r"] == 16 and manifest["lora"]["alpha"] == 32
    assert set(manifest["lora"]["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                       "up_proj", "down_proj"}
    assert manifest["versions"]["kardlite"] and manifest["training"]["steps"] == 2
    # the command in a copy edited by hand no longer agrees, and says where
    edited = dict(manifest, command=manifest["command"].replace("--lr 0.01", "--lr 0.02"))
    assert [p.split(":")[0] for p in check_command(edited)] == ["recipe.train.lr"]


# ------------------------------------------------------------------------------------------- merging


@pytest.mark.slow
def test_merged_adapter_is_the_trained_student(made: SimpleNamespace, tmp_path: Path) -> None:
    from kardlite.demo import demo_questions
    from kardlite.distill.student import STUDENT_FILE

    merged = ad.merge_adapter(made.out, tmp_path / "merged")
    item = demo_questions("train")[0]
    text = f"{item.question} Options: {'; '.join(item.options)}. Explanation:"
    trained, ours, base = (_logits(p, text) for p in (made.run / "model", merged, made.student))
    # fp16 storage of A and B is the only difference from train_student's own merge
    assert float((ours - trained).abs().max()) < 1e-3
    assert float((trained - base).abs().max()) > 0.1  # ... and the adapter does move the model
    info, run_info = read_json(merged / STUDENT_FILE), read_json(made.run / "model" / STUDENT_FILE)
    assert info["inference"] == run_info["inference"] and info["answer_format"] == run_info["answer_format"]
    assert info["adapter"]["sha256"] == made.manifest["adapter"]["sha256"]
    assert info["adapter"]["command"] == made.manifest["command"]


@pytest.mark.slow
def test_a_warm_start_is_stacked_into_one_adapter(made: SimpleNamespace, tmp_path: Path) -> None:
    # the made run stands in for an OpenBookQA run: the demo training continues from its merged model
    recipe = ad.manifest_recipe(made.manifest)
    out = make_demo_adapter(tmp_path / "warm", recipe=recipe, work=made.work, warm_start=made.run, progress=False)
    manifest = ad.read_manifest(out)
    assert manifest["warm_start"]["run"] == str(made.run) and manifest["warm_start"]["lora"]["r"] == 16
    assert manifest["warm_start"]["examples_sha256"] == made.manifest["examples"]["sha256"]
    # the examples file by name, never a path of the machine that made it (the shipped manifest travels)
    assert "/" not in manifest["warm_start"]["examples"] and manifest["warm_start"]["examples"].endswith(".jsonl")
    assert manifest["lora"]["r"] == 32 and manifest["lora"]["alpha"] == 32
    assert f"--warm-start {made.run}" in manifest["command"] and check_command(manifest) == []
    warm_run = made.work / f"student-{recipe.key(str(made.run / 'model'))}"
    text = "Which transporter does furosemide inhibit? Explanation:"
    merged = ad.merge_adapter(out, tmp_path / "merged")
    assert float((_logits(merged, text) - _logits(warm_run / "model", text)).abs().max()) < 1e-3


@pytest.mark.slow
def test_write_adapter_checks_the_run_against_the_recipe(made: SimpleNamespace, tmp_path: Path) -> None:
    recipe = ad.manifest_recipe(made.manifest)
    command = made.manifest["command"]
    with pytest.raises(ArtifactError, match=r"other settings than the recipe \(lr\)"):
        ad.write_adapter(made.run, tmp_path / "a", recipe=StudentRecipe(settings={**recipe.settings, "lr": 0.02}),
                         command=command)
    # a throughput setting the run did not use is no difference: the manifest records the run's own
    ran = read_json(made.run / "run_info.json")["config"]["max_batch_tokens"]
    other = StudentRecipe(settings={**recipe.settings, "max_batch_tokens": 4 * ran})
    manifest = ad.read_manifest(ad.write_adapter(made.run, tmp_path / "b", recipe=other, command=command))
    assert manifest["recipe"]["train"]["max_batch_tokens"] == ran and check_command(manifest) == []


# ------------------------------------------------------------------------------------------- refusals


@pytest.mark.slow
@pytest.mark.parametrize(("edit", "field"), [
    (lambda m: m["lora"].pop("r"), "lora.r"),
    (lambda m: m["base"].update(sha256="abc"), "base.sha256"),
    (lambda m: m.update(format_version=2), "format_version"),
    (lambda m: m["recipe"]["train"].update(lr=-1), "recipe.train.lr"),
    (lambda m: m["recipe"].pop("mode"), "recipe.mode"),
    (lambda m: m["adapter"].update(bytes=ad.MAX_ADAPTER_BYTES + 1), "adapter.bytes"),
    (lambda m: m["student"]["inference"].update(mode="nonsense"), "student.inference"),
])
def test_a_corrupt_manifest_names_file_and_field(made: SimpleNamespace, tmp_path: Path, edit: Any,
                                                 field: str) -> None:
    folder = _copy(made, tmp_path, edit)
    with pytest.raises(ad.AdapterError) as err:
        ad.read_manifest(folder)
    assert err.value.field == field
    assert f"{folder / ad.MANIFEST}, field '{field}'" in str(err.value) and "--retrain" in str(err.value)


@pytest.mark.slow
def test_corrupt_files_are_refused_before_anything_is_built(made: SimpleNamespace, tmp_path: Path) -> None:
    folder = _copy(made, tmp_path)
    (folder / ad.MANIFEST).write_text('{"format": ')
    with pytest.raises(ad.AdapterError, match=r"adapter\.json: line 1: malformed JSON"):
        ad.read_manifest(folder)
    folder = _copy(made, tmp_path / "b")
    data = bytearray((folder / ad.WEIGHTS).read_bytes())
    data[-1] ^= 0xFF  # one bit of one weight
    (folder / ad.WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ad.AdapterError) as err:
        ad.read_manifest(folder)
    assert err.value.field == "adapter.sha256" and err.value.path == str(folder / ad.WEIGHTS)
    # the demo build reads the adapter before any stage: the error comes first, nothing is built
    with pytest.raises(ArtifactError, match=r"adapter\.sha256"):
        from kardlite.demo.build import build_demo_bundle

        build_demo_bundle(tmp_path / "demo", fast=False, progress=False, adapter=folder)
    assert not (tmp_path / "demo").exists() and not (tmp_path / "demo.work").exists()


@pytest.mark.slow
def test_a_mismatch_falls_back_to_training_and_says_which_sha(made: SimpleNamespace, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # matching: the plan merges it, and the merged stage is reused while the adapter stays the same
    plan = _student_plan(made.out, retrain=False, progress=True)
    assert plan.adapter is not None and plan.recipe.to_json() == made.manifest["recipe"]
    work = tmp_path / "work"
    from kardlite.demo.build import _Log

    student = _stage_student_adapter(work, plan, _Log(False, 4))
    assert student == work / "student-adapter" and (student / "config.json").is_file()
    mtime = (student / "model.safetensors").stat().st_mtime_ns
    assert _stage_student_adapter(work, plan, _Log(False, 4)) == student
    assert (student / "model.safetensors").stat().st_mtime_ns == mtime

    name = sorted(made.manifest["data"])[0]
    folder = _copy(made, tmp_path, lambda m: (m["base"].update(sha256="0" * 64), m["data"].update({name: "1" * 64})))
    problems = ad.mismatches(ad.read_manifest(folder), folder)
    assert [p.split(":")[0] for p in problems] == ["base.sha256", f"data.{name}"]
    capsys.readouterr()
    plan = _student_plan(folder, retrain=False, progress=True)
    said = capsys.readouterr().out
    assert plan.adapter is None and plan.recipe.to_json() == made.manifest["recipe"]  # trains with its recipe
    assert "does not fit" in said and "base.sha256" in said and f"data.{name}" in said
    with pytest.raises(ad.AdapterError, match=r"base\.sha256"):
        ad.merge_adapter(folder, tmp_path / "merged")

    # --retrain: the adapter is not merged, its recipe is trained
    plan = _student_plan(made.out, retrain=True, progress=True)
    assert plan.adapter is None and plan.recipe.to_json() == made.manifest["recipe"]
    assert "retrain" in capsys.readouterr().out
    # no adapter at all: the defaults, as before adapters existed
    plan = _student_plan(tmp_path / "none", retrain=False, progress=True)
    assert plan.adapter is None and plan.recipe.is_default() and capsys.readouterr().out == ""
    from kardlite.distill import StudentTrainConfig

    assert plan.recipe.train_config() == StudentTrainConfig(**STUDENT_SETTINGS)  # the 12-step student of old


def test_a_bundle_is_reused_only_with_the_student_the_plan_makes(tmp_path: Path) -> None:
    from kardlite.demo.build import _StudentPlan

    def bundle(**demo: Any) -> Path:
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        out.mkdir()
        (out / "manifest.json").write_text(json.dumps({"demo": {"mode": "full", **demo}}))
        return out

    longer = StudentRecipe(settings={**STUDENT_SETTINGS, "max_steps": 200})
    trained = bundle(adapter=None, recipe=StudentRecipe().to_json())
    trained_longer = bundle(adapter=None, recipe=longer.to_json())
    merged = bundle(adapter={"sha256": "a" * 64}, recipe=longer.to_json())
    old = bundle()  # a full bundle from before adapters and recipes were recorded: made with the defaults
    train, merge = _StudentPlan(StudentRecipe()), _StudentPlan(longer, {"adapter": {"sha256": "a" * 64}})
    newer = _StudentPlan(longer, {"adapter": {"sha256": "b" * 64}})
    retrain = _StudentPlan(longer)  # --retrain, or an adapter that does not fit: its recipe trained here
    assert _same_student(trained, train) and _same_student(old, train)
    assert not _same_student(merged, train) and not _same_student(trained_longer, train)
    assert _same_student(merged, merge) and not _same_student(trained, merge) and not _same_student(merged, newer)
    assert _same_student(trained_longer, retrain) and not _same_student(old, retrain)
    # a bundle trained before a throughput default changed (max_batch_tokens) has the same student: kept
    before = StudentRecipe().to_json()
    before["train"]["max_batch_tokens"] = 4096
    assert _same_student(bundle(adapter=None, recipe=before), train)
    assert not _same_student(trained, retrain) and not _same_student(merged, retrain)


def test_retrain_is_refused_with_fast() -> None:
    result = _run(["demo", "--retrain", "--fast"])
    assert result.exit_code == 2 and result.stderr.strip().startswith("error: ") and "--retrain" in result.stderr
    from kardlite.demo.build import build_demo_bundle

    with pytest.raises(InputError, match="retrain"):
        build_demo_bundle(Path("never-built"), fast=True, retrain=True)


def test_a_recipe_names_the_field_it_refuses() -> None:
    good = StudentRecipe().to_json()
    for edit, field in [(lambda r: r.update(mode="nope"), "recipe.mode"),
                        (lambda r: r.update(n_docs=True), "recipe.n_docs"),
                        (lambda r: r["train"].update(batch_size=0), "recipe.train.batch_size"),
                        (lambda r: r["train"].update(no_such_setting=1), "recipe.train.settings")]:
        data = copy.deepcopy(good)
        edit(data)
        with pytest.raises(InputError) as err:
            StudentRecipe.from_json(data)
        assert err.value.field == field, (field, str(err.value))


# ------------------------------------------------------------------------------------------- size


@pytest.mark.slow
def test_smollm2_r16_all_linear_fits_the_size_limit() -> None:
    from transformers import AutoConfig

    from kardlite._hf import resolve

    c = AutoConfig.from_pretrained(resolve("smollm2"))
    kv = c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
    per_layer = [(c.hidden_size, c.hidden_size), (c.hidden_size, kv), (c.hidden_size, kv), (c.hidden_size,
                 c.hidden_size), (c.hidden_size, c.intermediate_size), (c.hidden_size, c.intermediate_size),
                 (c.intermediate_size, c.hidden_size)]  # q k v o gate up down: (in, out)
    expected = 2 * 16 * sum(i + o for i, o in per_layer) * c.num_hidden_layers  # fp16 A (r x in) and B (out x r)
    assert ad.lora_bytes(None, 16) == expected
    assert expected < ad.MAX_ADAPTER_BYTES / 2 and 2 * expected < ad.MAX_ADAPTER_BYTES  # a warm start stacks two


@pytest.mark.slow
def test_an_adapter_over_the_limit_is_refused(made: SimpleNamespace, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = ad.manifest_recipe(made.manifest)
    # before training: rank 5000 on the tiny llama is 4096 bytes per rank, 20.5 MB
    big = StudentRecipe(settings={**recipe.settings, "lora_r": 5000})
    with pytest.raises(InputError, match="over the 20 MB limit") as err:
        make_demo_adapter(tmp_path / "big", recipe=big, work=tmp_path / "never", progress=False)
    assert err.value.field == "lora_r" and not (tmp_path / "never").exists()
    # when writing: the file's own size is checked, and nothing is left behind
    monkeypatch.setattr(ad, "MAX_ADAPTER_BYTES", made.manifest["adapter"]["bytes"] - 1)
    with pytest.raises(ArtifactError, match="over the"):
        ad.write_adapter(made.run, tmp_path / "small", recipe=recipe, command=made.manifest["command"])
    assert not (tmp_path / "small").exists()


# ------------------------------------------------------------------------------------------- packaging


@pytest.mark.slow
def test_the_wheel_and_the_sdist_carry_the_adapter(tmp_path: Path) -> None:
    # A copy of the package with an adapter folder in it, built by setuptools as pip would build it.
    import subprocess
    import sys
    import tarfile
    import zipfile

    root = Path(__file__).resolve().parents[2]
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    # without a shipped adapter folder (if any): a stand-in replaces it; adapter.py is copied
    shutil.copytree(root / "kardlite", src / "kardlite", ignore=shutil.ignore_patterns("__pycache__", "adapter"))
    (src / "kardlite" / "demo" / "adapter").mkdir()
    (src / "kardlite" / "demo" / "adapter" / ad.MANIFEST).write_text("{}")
    (src / "kardlite" / "demo" / "adapter" / ad.WEIGHTS).write_bytes(b"\0" * 8)
    out = tmp_path / "dist"

    def build(kind: str) -> str:  # one process each: setuptools keeps state between builds
        code = f"import sys; from setuptools import build_meta as b; print('built:', b.build_{kind}(sys.argv[1]))"
        done = subprocess.run([sys.executable, "-c", code, str(out)], cwd=src, capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.rsplit("built: ", 1)[1].strip()

    wheel_name, sdist_name = build("wheel"), build("sdist")
    wanted = {f"kardlite/demo/adapter/{ad.MANIFEST}", f"kardlite/demo/adapter/{ad.WEIGHTS}"}
    with zipfile.ZipFile(out / wheel_name) as wheel:
        assert wanted <= set(wheel.namelist())
        assert "kardlite/demo/adapter.py" in wheel.namelist()  # the module beside the folder of the same name
    with tarfile.open(out / sdist_name) as sdist:
        assert {f"{sdist_name.removesuffix('.tar.gz')}/{name}" for name in wanted} <= set(sdist.getnames())
