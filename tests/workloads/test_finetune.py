"""Fine-tuning: tokenising, scoring against independent computations, the schedule, gradient
accumulation, divergence as a status, data splits, and a whole cell on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from harness.data.instructions import (
    DataUnavailable,
    Example,
    builtin_data,
    jsonl_examples,
    load_instructions,
    split_examples,
)
from harness.errors import HarnessError
from harness.workloads import sft
from harness.workloads.settings import FinetuneSettings
from tests.conftest import TINY


class _Tok:
    """Characters as token ids (a-z -> 1..26, space 27, anything else 28), eos 0."""

    eos_token_id = 0
    pad_token_id = None

    def __call__(self, text, add_special_tokens=False):
        ids = [ord(c) - 96 if "a" <= c <= "z" else 27 if c == " " else 28 for c in text]
        return {"input_ids": ids}


def test_tokenize_masks_the_prompt_and_ends_the_answer():
    ex = Example("ab", "cd")
    t = sft.tokenize(_Tok(), ex, "plain", 64, completion_only=True)
    prompt = _Tok()(ex.prompt("plain"))["input_ids"]
    assert t.ids == prompt + [27, 3, 4, 0]  # " cd" then eos
    assert t.labels == [sft.IGNORE] * len(prompt) + [27, 3, 4, 0]
    assert t.completion == 4
    full = sft.tokenize(_Tok(), ex, "plain", 64, completion_only=False)
    assert full.labels == full.ids


def test_tokenize_cuts_the_prompt_from_the_left_never_the_answer():
    ex = Example("abcdefghij" * 3, "xyz")
    t = sft.tokenize(_Tok(), ex, "plain", 10, completion_only=True)
    assert len(t.ids) == 10 and t.ids[-5:] == [27, 24, 25, 26, 0]


def test_alpaca_template_is_alpaca_loras():
    with_input = Example("Sum.", "3", input="1 2").prompt("alpaca")
    assert with_input.startswith("Below is an instruction that describes a task, paired with")
    assert with_input.endswith("### Instruction:\nSum.\n\n### Input:\n1 2\n\n### Response:\n")
    assert Example("Hi.", "x").prompt("alpaca").endswith("### Instruction:\nHi.\n\n### Response:\n")


def test_collate_left_pads_and_counts_positions_from_the_first_real_token():
    a = sft.Tokenized([5, 6, 7], [sft.IGNORE, 6, 7], 2)
    b = sft.Tokenized([8, 9], [sft.IGNORE, 9], 1)
    batch = sft.collate([a, b], pad_id=0, device="cpu")
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 8, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 1]]
    assert batch["labels"].tolist() == [[sft.IGNORE, 6, 7], [sft.IGNORE, sft.IGNORE, 9]]
    assert batch["keep"] == 3  # the longest completion (2) plus the position before it


@pytest.fixture()
def tiny_model(synthetic_cache):
    from harness import models
    from harness.schemes import get_handler

    handler = get_handler("fp32")
    loaded = handler.load(models.resolve(TINY), handler.options(), "cpu")
    return loaded


def _items(tokenizer, n=6):
    data = builtin_data()
    return [sft.tokenize(tokenizer, e, "plain", 96, True) for e in data.heldout[:n]]


def test_score_matches_the_models_own_loss_on_unpadded_items(tiny_model):
    """Per-item loss from padded batches with the head on the last positions only equals the
    model's own mean loss over the completion labels of each item alone."""
    model, tok = tiny_model.model, tiny_model.tokenizer
    items = _items(tok)
    scores = sft.score(model, items, pad_id=tok.eos_token_id, batch_size=4)
    for item, got in zip(items, scores.loss, strict=True):
        ids = torch.tensor([item.ids])
        with torch.no_grad():
            want = model(input_ids=ids, labels=torch.tensor([item.labels])).loss
        assert got == pytest.approx(float(want), rel=1e-4)


def test_exact_match_agrees_with_greedy_generation(tiny_model):
    model, tok = tiny_model.model, tiny_model.tokenizer
    items = _items(tok)
    scores = sft.score(model, items, pad_id=tok.eos_token_id, batch_size=3)
    for item, exact in zip(items, scores.exact, strict=True):
        prompt = item.ids[: len(item.ids) - item.completion]
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=item.completion,
                                 min_new_tokens=item.completion, do_sample=False,
                                 eos_token_id=None, pad_token_id=0)  # fmt: skip
        generated = out[0, len(prompt) :].tolist()
        assert exact == float(generated == item.ids[len(prompt) :])


def test_lr_factor_by_hand():
    assert sft.lr_factor("cosine", 0, 2, 10) == pytest.approx(1 / 3)
    assert sft.lr_factor("cosine", 1, 2, 10) == pytest.approx(2 / 3)
    assert sft.lr_factor("cosine", 2, 2, 10) == pytest.approx(1.0)
    assert sft.lr_factor("cosine", 6, 2, 10) == pytest.approx(0.5)  # half-way through decay
    assert sft.lr_factor("linear", 6, 2, 10) == pytest.approx(0.5)
    assert sft.lr_factor("linear", 10, 2, 10) == pytest.approx(0.0)
    assert sft.lr_factor("constant", 9, 2, 10) == 1.0


def _settings(**kw):
    base = dict(enabled=True, steps=4, batch_size=2, warmup_steps=0, eval_every=2,
                max_grad_norm=0.0, schedule="constant")  # fmt: skip
    return FinetuneSettings(**{**base, **kw})


def test_grad_accumulation_weighs_every_completion_token_the_same(tiny_model):
    """One step over 4 items equals 2 accumulated micro-batches of 2: same gradient."""
    model, tok = tiny_model.model, tiny_model.tokenizer
    items = _items(tok, 4)
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(settings, batches):
        model.zero_grad(set_to_none=True)
        opt = torch.optim.SGD(params, lr=0.0)
        sft.train_steps(model, params, opt, iter(batches), settings, lambda: 1.0, 1.0, 0)
        return [p.grad for p in params]

    # zero_grad in the loop clears them: read them through a hook on the optimizer instead
    seen: list[list[torch.Tensor]] = []
    orig = torch.optim.SGD.step

    def capture(self, *a, **k):
        seen.append([p.grad.clone() for p in params])
        return orig(self, *a, **k)

    torch.optim.SGD.step = capture
    try:
        grads(_settings(steps=1, batch_size=4, eval_every=0), [items])
        grads(_settings(steps=1, batch_size=2, grad_accum=2, eval_every=0),
              [items[:2], items[2:]])  # fmt: skip
    finally:
        torch.optim.SGD.step = orig
    whole, accumulated = seen
    for g1, g2 in zip(whole, accumulated, strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


def test_divergence_stops_the_run_and_says_why(tiny_model):
    model, tok = tiny_model.model, tiny_model.tokenizer
    items = _items(tok, 4)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0)
    losses = iter([5.0])  # held-out loss at step 2: 5x its start (1.0)
    run = sft.train_steps(model, params, opt, sft.micro_batches(items, 2, 0),
                          _settings(steps=6, eval_every=2), lambda: next(losses), 1.0,
                          0)  # fmt: skip
    assert "exceeds 1.5 x its start" in run.stopped
    assert len(run.train_loss) == 2 and run.eval_steps == [0, 2]


def test_nan_loss_is_divergence(tiny_model):
    model, tok = tiny_model.model, tiny_model.tokenizer
    items = _items(tok, 4)
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        params[0].fill_(float("nan"))
    opt = torch.optim.SGD(params, lr=0.1)
    run = sft.train_steps(model, params, opt, sft.micro_batches(items, 2, 0),
                          _settings(steps=3), lambda: 1.0, 1.0, 0)  # fmt: skip
    assert run.stopped.startswith("training loss nan") and len(run.train_loss) == 1


def test_outcome_statuses():
    from harness.workloads.finetune import _outcome

    s = _settings(min_improvement=0.1)
    assert "status" not in _outcome(sft.Run(), 2.0, 1.0, s)
    flat = _outcome(sft.Run(), 2.0, 1.9, s)
    assert flat["status"] == "no_learning" and "less than a 10% drop" in flat["error"]
    assert _outcome(sft.Run(stopped="x"), 2.0, 1.0, s)["status"] == "diverged"


# ---- data --------------------------------------------------------------------------------


def test_builtin_split_shares_no_question_and_no_subject():
    data = builtin_data()
    train_q = {e.instruction for e in data.train}
    assert not any(e.instruction in train_q for e in data.heldout)
    assert not {e.group for e in data.train} & {e.group for e in data.heldout}
    assert 0.1 < len(data.heldout) / (len(data.heldout) + len(data.train)) < 0.35
    assert data.heldout_sha256 == builtin_data().heldout_sha256  # stable


def test_jsonl_alpaca_and_prompt_completion(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(20)]
    rows.append({"prompt": "p", "completion": "c"})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_instructions(str(path), 0.3)
    assert len(data.train) + len(data.heldout) == 21
    assert data.name == "jsonl:d.jsonl" and data.split_rule.startswith("group-hash<0.3")
    assert Example("p", "c", "", "p\n", "user") in data.train + data.heldout


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "q", "output": "a"}\n{"question": "q"}\n')
    with pytest.raises(HarnessError, match=r"bad.jsonl:2: expected keys instruction/input/output"):
        jsonl_examples(path)
    path.write_text("{not json\n")
    with pytest.raises(HarnessError, match=r"bad.jsonl:1: not valid JSON"):
        jsonl_examples(path)
    with pytest.raises(HarnessError, match="not found"):
        jsonl_examples(tmp_path / "missing.jsonl")


def test_a_split_that_leaves_one_side_empty_is_refused():
    with pytest.raises(HarnessError, match="both need at least one"):
        split_examples("x", [Example("q", "a", "", "g")], 0.5)


def test_hub_dataset_offline_is_unavailable(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataUnavailable, match="is not available"):
        load_instructions("hf:someone/no-such-dataset", 0.2)


# ---- a whole cell --------------------------------------------------------------------------


def _cell(adapter: str, **finetune):
    from harness.config import Cell, LoraSettings, adapter_options
    from harness.schemes import get_handler
    from harness.workloads.settings import Workloads

    settings = dict(enabled=True, template="plain", steps=4, batch_size=4, eval_items=8,
                    curve_items=4, eval_every=2, warmup_steps=1, corpus_windows=2,
                    corpus_window=32, lr=3e-3, min_improvement=0.0)  # fmt: skip
    settings.update(finetune)
    return Cell(
        experiment="t", model=TINY, precision="fp32",
        precision_options=get_handler("fp32").options().model_dump(), adapter=adapter,
        adapter_options=adapter_options(adapter, LoraSettings(dropout=0.0)), seed=0,
        device="cpu", timeout_s=120,
        workloads=Workloads(footprint={"enabled": False}, inference={"enabled": False},
                            perplexity={"enabled": False}, finetune=settings),
    )  # fmt: skip


def _rows(record):
    return {r["metric"]: r for r in record["rows"] if r.get("workload") == "finetune"}


def test_a_lora_cell_scores_before_and_after_on_the_same_items(synthetic_cache):
    from harness.runner.cell import run_cell

    record = run_cell(_cell("lora-r4"))
    rows = _rows(record)
    before, after = rows["heldout_loss_before"], rows["heldout_loss_after"]
    assert len(before["samples"]) == len(after["samples"]) == 8
    change = rows["heldout_loss_change"]
    want = sum(a - b for a, b in zip(after["samples"], before["samples"], strict=True)) / 8
    assert change["value"] == pytest.approx(want)
    assert change["ci_low"] <= change["value"] <= change["ci_high"]
    assert rows["train_loss_curve"]["steps"] == [1, 2, 3, 4]
    assert rows["heldout_loss_curve"]["steps"] == [0, 2, 4]
    curve0 = sum(before["samples"][:4]) / 4  # the curve items are the first held-out items
    assert rows["heldout_loss_curve"]["samples"][0] == pytest.approx(curve0)
    # the reloaded adapter reproduces the trained model; merging a dense base changes ~nothing
    assert rows["reload_max_item_loss_diff"]["value"] < 1e-4
    assert abs(rows["merge_loss_change"]["value"]) < 1e-3
    assert "data=builtin;split=group-hash<0.25" in before["protocol"]
    assert rows["corpus_perplexity_after"]["protocol"].startswith("token-windows;window=32")
    assert record["status"] == rows["finetune_outcome"].get("status", "ok")


def test_a_none_cell_is_scored_before_only(synthetic_cache):
    from harness.runner.cell import run_cell

    rows = _rows(run_cell(_cell("none")))
    assert "heldout_loss_before" in rows and "heldout_loss_after" not in rows


def test_a_run_that_learns_nothing_is_not_ok(synthetic_cache):
    """lr so small nothing moves: the cell's status says so, never ok."""
    from harness.runner.cell import run_cell

    record = run_cell(_cell("lora-r4", lr=1e-12, min_improvement=0.05, check_reload=False,
                            check_merge=False))  # fmt: skip
    outcome = _rows(record)["finetune_outcome"]
    assert outcome["status"] == "no_learning" and record["status"] == "no_learning"
    assert math.isfinite(outcome["value"]) and abs(outcome["value"]) < 1e-3


def test_finetune_and_the_training_probe_together_are_refused():
    from harness.config import Experiment

    with pytest.raises(ValueError, match="finetune and training both train"):
        both = {"training": {"enabled": True}, "finetune": {"enabled": True}}
        Experiment(name="x", models=[TINY], precisions=["fp32"], workloads=both)


def test_settings_refuse_warmup_past_the_budget():
    with pytest.raises(ValueError, match="warmup_steps"):
        FinetuneSettings(steps=3, warmup_steps=3)
