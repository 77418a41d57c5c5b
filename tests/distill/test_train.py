from __future__ import annotations

import json

import pytest

from kardlite.data.records import QAItem
from kardlite.distill.examples import build_examples, read_kept_rationales, save_examples
from kardlite.distill.student import load_student
from kardlite.distill.train import StudentTrainConfig, split_by_question, train_student
from tests.distill.conftest import ITEMS, write_rationales


@pytest.fixture()
def kard_examples(tmp_path, tiny_kb):
    kept = read_kept_rationales(write_rationales(tmp_path / "kept.jsonl"))
    return save_examples(build_examples(ITEMS, kept, "kard", kb=tiny_kb, k=2), tmp_path / "kard.jsonl")


def _cfg(student, **kw):
    base = {"student": str(student), "batch_size": 4, "max_source_tokens": 256, "max_target_tokens": 64,
            "lr": 3e-3, "save_every": 1, "dev_fraction": 0.0}
    return StudentTrainConfig(**{**base, **kw})


def test_dev_split_is_by_question():
    rows = [{"item_id": f"q{i % 10}", "n": i} for i in range(40)]  # 4 rationales per question
    train, dev = split_by_question(rows, 0.3, seed=42)
    assert dev and {r["item_id"] for r in train}.isdisjoint({r["item_id"] for r in dev})
    assert len(train) + len(dev) == 40 and len({r["item_id"] for r in dev}) == 3


def test_training_lowers_loss_and_saves_a_plain_model(tmp_path, kard_examples, tiny_llama_dir):
    out = tmp_path / "run"
    model_dir = train_student(kard_examples, out, _cfg(tiny_llama_dir, max_steps=4, batch_size=7))
    curve = json.loads((out / "loss_curve.json").read_text())
    assert [h["step"] for h in curve] == [1, 2, 3, 4]
    # the same batch (7 examples = the whole set) every step: the loss must fall
    assert curve[-1]["train_loss"] < curve[0]["train_loss"]
    assert (out / "loss_curve.csv").read_text().startswith("step,")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"] == 4 and manifest["student"]["mode"] == "kard"
    assert manifest["data"]["examples_sha256"] and manifest["versions"]["torch"]
    # plain merged model: safetensors, no adapter files, loads without peft
    assert (model_dir / "model.safetensors").is_file() and not (model_dir / "adapter_config.json").exists()
    import torch

    student = load_student(model_dir)
    assert student.kind == "causal" and student.use_chat_template and student.info["max_source_tokens"] == 256
    ids = torch.tensor([student.encode("Question: what do plants release?")])
    with torch.no_grad():
        a = student.model(ids).logits
        b = load_student(out).model(ids).logits  # the run dir works too
    assert torch.allclose(a, b)


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, kard_examples, tiny_llama_dir):
    import torch

    cfg = _cfg(tiny_llama_dir, max_steps=4, batch_size=2, lora_dropout=0.1)
    ref = train_student(kard_examples, tmp_path / "ref", cfg)

    def stop_at_2(step, loss):
        if step == 2:
            raise KeyboardInterrupt("stopped at step 2")

    with pytest.raises(KeyboardInterrupt, match="stopped at step 2"):
        train_student(kard_examples, tmp_path / "run", cfg, on_step=stop_at_2)
    assert not (tmp_path / "run" / "model").exists()
    assert json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["step"] == 2
    # no pickles: what a resume loads is safetensors and JSON
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoint").iterdir()) == [
        "optimizer.safetensors", "state.json", "trainable.safetensors"]
    seen = []
    model_dir = train_student(kard_examples, tmp_path / "run", cfg, on_step=lambda s, _: seen.append(s))
    assert seen == [3, 4]  # no step repeated
    curve = json.loads((tmp_path / "run" / "loss_curve.json").read_text())
    assert [h["step"] for h in curve] == [1, 2, 3, 4]
    ref_curve = json.loads((tmp_path / "ref" / "loss_curve.json").read_text())
    assert [h["train_loss"] for h in curve] == pytest.approx([h["train_loss"] for h in ref_curve], rel=1e-4)
    a = load_student(ref).model.state_dict()
    b = load_student(model_dir).model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_seq2seq_student_trains_and_scores(tmp_path, tiny_kb, tiny_t5_dir):
    kept = read_kept_rationales(write_rationales(tmp_path / "kept.jsonl"))
    examples = save_examples(build_examples(ITEMS, kept, "rd"), tmp_path / "rd.jsonl")
    out = tmp_path / "t5"
    model_dir = train_student(examples, out, _cfg(tiny_t5_dir, max_steps=3, batch_size=7, lr=1e-2))
    curve = json.loads((out / "loss_curve.json").read_text())
    assert curve[-1]["train_loss"] < curve[0]["train_loss"]
    student = load_student(model_dir)
    assert student.kind == "seq2seq" and not student.use_chat_template
    assert "<|im_start|>" not in student.prompt(ITEMS[0], "rd").text


def test_prompt_budget_is_respected_and_answer_line_survives_target_cut(tmp_path, kard_examples, tiny_llama_dir):
    from kardlite.distill.examples import read_examples
    from kardlite.distill.train import _encode_row, _featurize

    student = load_student(tiny_llama_dir)
    row = read_examples(kard_examples)[0]
    full = student.prompt(row["item"], "kard", passages=[], max_tokens=512)
    budget = full.n_tokens + 4  # not enough room for a whole passage
    cfg = _cfg(tiny_llama_dir, max_source_tokens=budget, max_target_tokens=12)
    stats = {"trimmed_prompts": 0, "truncated_targets": 0}
    feat = _featurize(student, _encode_row(student, row, cfg, stats), row["item_id"], cfg.max_target_tokens, stats)
    n_prompt = sum(1 for t in feat.labels if t == -100)
    assert n_prompt <= budget and stats == {"trimmed_prompts": 1, "truncated_targets": 1}
    text = student.tokenizer.decode(feat.input_ids)
    assert all(f"{letter}. {opt}" in text for letter, opt in zip("ABCD", row["item"].options, strict=True))
    target = student.tokenizer.decode([t for t in feat.labels if t != -100])
    assert target.rstrip().endswith("Answer: A" + student.tokenizer.eos_token) and len(feat.labels) - n_prompt <= 12


def test_target_budget_cuts_at_most_one_percent():
    from kardlite.distill.train import target_budget

    assert target_budget([10] * 99 + [50]) == 10  # 1 of 100 may be cut
    assert target_budget([10] * 98 + [50, 60]) == 50
    assert target_budget(list(range(1, 1001))) == 990
    lengths = [7, 30, 12, 90, 45] * 40
    budget = target_budget(lengths)
    assert sum(n > budget for n in lengths) <= 0.01 * len(lengths) and budget in lengths


def test_length_grouped_batches_cover_every_example_once():
    from kardlite.distill.train import _micro_batches

    lengths = [(i * 37) % 101 for i in range(203)]
    cfg = StudentTrainConfig(batch_size=8)
    batches = _micro_batches(lengths, 0, cfg)
    assert sorted(i for b in batches for i in b) == list(range(203)) and max(map(len, batches)) == 8
    assert batches == _micro_batches(lengths, 0, cfg) and batches != _micro_batches(lengths, 1, cfg)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    plain = _micro_batches(lengths, 0, StudentTrainConfig(batch_size=8, group_by_length=False))
    assert spread < 0.5 * sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plain)


def test_token_capped_passes_and_grouping_do_not_change_what_is_learnt(tmp_path, kard_examples, tiny_llama_dir):
    # One window split into single-row forward passes gives the same loss and update as one big pass.
    common = {"max_steps": 2, "batch_size": 7, "lora_dropout": 0.0, "group_by_length": False}
    whole = _cfg(tiny_llama_dir, max_batch_tokens=None, **common)
    split = _cfg(tiny_llama_dir, max_batch_tokens=1, **common)
    train_student(kard_examples, tmp_path / "whole", whole)
    train_student(kard_examples, tmp_path / "split", split)
    a = json.loads((tmp_path / "whole" / "loss_curve.json").read_text())
    b = json.loads((tmp_path / "split" / "loss_curve.json").read_text())
    assert [h["train_loss"] for h in a] == pytest.approx([h["train_loss"] for h in b], rel=1e-4)
    assert a[0]["tokens"] == b[0]["tokens"] and b[0]["padded_tokens"] == b[0]["tokens"]  # no padding at all
    assert a[0]["padded_tokens"] > a[0]["tokens"]
    # packing (short examples share a row) trains the same, with no more padded tokens than one example per row
    packed = _cfg(tiny_llama_dir, max_batch_tokens=None, pack=True, **common)
    train_student(kard_examples, tmp_path / "packed", packed)
    c = json.loads((tmp_path / "packed" / "loss_curve.json").read_text())
    assert [h["train_loss"] for h in a] == pytest.approx([h["train_loss"] for h in c], rel=1e-4)
    assert c[0]["tokens"] == a[0]["tokens"] and c[0]["padded_tokens"] <= a[0]["padded_tokens"]


def test_frozen_lower_layers_stay_put_and_info_records_the_decoding_budget(tmp_path, kard_examples, tiny_llama_dir):
    from safetensors.torch import load_file

    out = tmp_path / "frozen"
    model_dir = train_student(kard_examples, out, _cfg(tiny_llama_dir, max_steps=3, max_target_tokens=None,
                                                       freeze_layers=1, lora=False, lr=1e-2))
    before = load_file(str(tiny_llama_dir / "model.safetensors"))
    after = load_file(str(model_dir / "model.safetensors"))
    assert all((before[k] == after[k]).all() for k in before if ".layers.0." in k)
    assert any(not (before[k] == after[k]).all() for k in before if ".layers.1." in k)
    info = json.loads((model_dir / "kardlite_student.json").read_text())
    rows = [json.loads(x) for x in kard_examples.read_text().splitlines()]
    student = load_student(tiny_llama_dir)
    longest = max(len(student.encode(student.prompt(QAItem.from_dict(r["item"]), "kard", rationale=r["rationale"],
                                                    with_target=True).target)) for r in rows)
    assert info["n_docs"] == 2 and info["max_new_tokens"] == longest + 16
    assert info["max_target_tokens"] <= longest


def test_snapshots_rebuild_the_model_at_their_step(tmp_path, kard_examples, tiny_llama_dir):
    import torch

    from kardlite.distill.train import list_snapshots, snapshot_model

    out = tmp_path / "snap"
    final = train_student(kard_examples, out, _cfg(tiny_llama_dir, max_steps=4, snapshot_every=2, lora_dropout=0.0))
    assert list_snapshots(out) == [2, 4]
    rebuilt = snapshot_model(out, 4, tmp_path / "at4")
    first = snapshot_model(out, 2, tmp_path / "at2")
    ids = torch.tensor([load_student(final).encode("Question: what do plants release?")])
    with torch.no_grad():
        a, b, c = (load_student(p).model(ids).logits for p in (final, rebuilt, first))
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, c, atol=1e-5)
    assert json.loads((rebuilt / "kardlite_student.json").read_text())["snapshot_step"] == 4


def test_target_position_loss_equals_the_full_loss(kard_examples, tiny_llama_dir):
    """The loss from hidden states gathered at target positions (right padding, no mask) equals the textbook one:
    left padding with an attention mask, logits over every position, cross-entropy over the target tokens."""
    import torch
    import torch.nn.functional as F

    from kardlite.distill.train import _collate, _encode_row, _featurize, _loss_sum

    student = load_student(str(tiny_llama_dir))
    cfg = _cfg(tiny_llama_dir)
    stats = {"trimmed_prompts": 0, "truncated_targets": 0}
    from kardlite.distill.examples import read_examples

    rows = read_examples(kard_examples)[:5]
    feats = [_featurize(student, _encode_row(student, r, cfg, stats), r["item_id"], 64, stats) for r in rows]
    assert len({len(f.input_ids) for f in feats}) > 1  # rows of different lengths: padding is exercised
    model = student.model.eval()
    with torch.no_grad():
        ours, n_ours = _loss_sum(model, _collate(feats, student), "causal")
        n = max(len(f.input_ids) for f in feats)
        pad = student.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (n - len(f.input_ids)) + f.input_ids for f in feats])
        mask = torch.tensor([[0] * (n - len(f.input_ids)) + [1] * len(f.input_ids) for f in feats])
        labels = torch.tensor([[-100] * (n - len(f.labels)) + f.labels for f in feats])
        logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
        full = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                               ignore_index=-100, reduction="sum")
    assert n_ours == sum(f.n_target for f in feats)
    assert float(ours) / n_ours == pytest.approx(float(full) / n_ours, abs=1e-5)


def test_packed_and_unpacked_batches_give_the_same_loss_and_gradients(kard_examples, tiny_llama_dir):
    """Several examples in one row (positions restarting per example) compute the same loss and the same gradients as
    one example per row; the packed batch has fewer rows and fewer pads."""
    import torch

    from kardlite.distill.examples import read_examples
    from kardlite.distill.train import _collate, _encode_row, _Feature, _featurize, _loss_sum

    student = load_student(str(tiny_llama_dir))
    cfg = _cfg(tiny_llama_dir)
    stats = {"trimmed_prompts": 0, "truncated_targets": 0}
    rows = read_examples(kard_examples)[:3]
    feats = [_featurize(student, _encode_row(student, r, cfg, stats), r["item_id"], 64, stats) for r in rows]
    longest = max(feats, key=lambda f: len(f.input_ids))
    # short examples (a prompt start and a few target tokens) that fit beside each other in the longest row
    for k, m in enumerate((len(longest.input_ids) // 3, len(longest.input_ids) // 4, 9)):
        ids = longest.input_ids[k:k + m]
        feats.append(_Feature(ids, [-100] * (m // 2) + ids[m // 2:], f"short{k}"))
    model = student.model.train()

    def loss_and_grads(pack: bool):
        model.zero_grad(set_to_none=True)
        batch = _collate(feats, student, pack=pack)
        loss, n = _loss_sum(model, batch, "causal")
        loss.backward()
        grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
        return batch, float(loss.detach()), n, grads

    flat, loss_flat, n_flat, grads_flat = loss_and_grads(False)
    packed, loss_packed, n_packed, grads_packed = loss_and_grads(True)
    assert packed["input_ids"].shape[0] < flat["input_ids"].shape[0] == len(feats)
    assert packed["input_ids"].shape[1] == flat["input_ids"].shape[1]  # no row grows past the longest example
    assert (packed["labels"] != -100).sum() == (flat["labels"] != -100).sum()
    assert n_packed == n_flat == sum(f.n_target for f in feats)
    assert loss_packed / n_packed == pytest.approx(loss_flat / n_flat, abs=1e-5)
    assert grads_flat.keys() == grads_packed.keys() and grads_flat
    for name, g in grads_flat.items():
        assert torch.allclose(g, grads_packed[name], atol=1e-5, rtol=1e-4), name
    # and packing really separates the examples: without restarting positions the loss differs
    leaked = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"]))
    with torch.no_grad():
        loss_leaked, _ = _loss_sum(model, leaked, "causal")
    assert abs(float(loss_leaked) / n_packed - loss_packed / n_packed) > 1e-3


def test_an_old_pickle_checkpoint_is_refused_not_loaded(tmp_path, kard_examples, tiny_llama_dir):
    from kardlite.errors import ArtifactError

    ckpt = tmp_path / "run" / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text('{"step": 2}')
    (ckpt / "trainable.pt").write_bytes(b"\x80\x04not read")  # an older kardlite's torch.save file
    with pytest.raises(ArtifactError, match="torch pickle files, which kardlite no longer loads"):
        train_student(kard_examples, tmp_path / "run", _cfg(tiny_llama_dir, max_steps=2, batch_size=2))
