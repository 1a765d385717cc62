"""Perplexity protocols, agreement with the baseline, accuracy rows."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from harness.workloads.accuracy import _task_rows, token_perplexity_from_words
from harness.workloads.agreement import build_reference, compare
from harness.workloads.perplexity import window_nlls, windows_of


class _FixedLogits(torch.nn.Module):
    """A 'model' whose next-token distribution is the same everywhere."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits
        self.device = torch.device("cpu")

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False):
        batch, length = input_ids.shape
        return SimpleNamespace(logits=self.logits.expand(batch, length, -1).clone())


def test_token_perplexity_hand_computed() -> None:
    # uniform over 10 tokens: every NLL is ln 10, perplexity exactly 10
    model = _FixedLogits(torch.zeros(10))
    windows = windows_of(torch.arange(40) % 10, window=8, max_tokens=40)
    per_window, total, count = window_nlls(model, windows, batch_size=2)
    assert windows.shape == (5, 8) and count == 5 * 7
    assert math.exp(total / count) == pytest.approx(10.0)
    # p(token 0) = 1/2, the rest share 1/2: sequence of zeros -> NLL ln 2
    logits = torch.log(torch.tensor([0.5] + [0.5 / 9] * 9))
    _, total, count = window_nlls(_FixedLogits(logits), torch.zeros(1, 5, dtype=torch.long), 1)
    assert math.exp(total / count) == pytest.approx(2.0)
    assert per_window == pytest.approx([math.log(10)] * 5)


def test_rolling_and_windowed_protocols_agree_on_a_short_corpus(tiny_source) -> None:
    from harness.data.lmeval import evaluate_tasks
    from harness.data.rolling_task import ROLLING_TASK, write_rolling_task
    from harness.schemes import get_handler

    doc = "The quick brown fox jumps over the lazy dog. " * 6
    loaded = get_handler("fp32").load(tiny_source, get_handler("fp32").options(), "cpu")
    ids = torch.tensor(loaded.tokenizer(doc, add_special_tokens=False)["input_ids"])
    _, total, count = window_nlls(loaded.model, ids[None], batch_size=1)
    windowed = math.exp(total / count)
    task_dir = tiny_source.path + "-tasks"
    write_rolling_task(task_dir, [doc])
    rows = evaluate_tasks(
        loaded.model,
        loaded.tokenizer,
        [ROLLING_TASK],
        include_path=task_dir,
        batch_size=1,
        max_length=1024,
        log_samples=False,
    )
    word = next(r["value"] for r in rows if r.get("metric") == "word_perplexity")
    rolling = token_perplexity_from_words(word, [doc], loaded.tokenizer)
    # rolling also scores the first token (from the end-of-text prefix): one token in ~270
    assert rolling == pytest.approx(windowed, rel=0.01)


def test_kl_of_baseline_with_itself_is_zero_and_of_a_perturbed_model_positive() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 16, 50) * 3
    model = _FixedLogits(torch.zeros(50))
    model.forward = lambda input_ids, use_cache=False: SimpleNamespace(logits=logits[:1])  # type: ignore[method-assign]
    ref = build_reference(model, torch.zeros(1, 16, dtype=torch.long), k=8)
    same_kl, same_top1 = compare(logits[0], {k: v[0] for k, v in ref.items()})
    assert float(same_kl.max()) < 1e-6 and float(same_top1.mean()) == 1.0
    noisy = logits[0] + torch.randn(16, 50)
    kl, top1 = compare(noisy, {k: v[0] for k, v in ref.items()})
    assert float(kl.mean()) > 0.01 and float(top1.mean()) < 1.0
    # coarsened KL never exceeds the full KL (data processing inequality)
    p, q = torch.log_softmax(logits[0], -1), torch.log_softmax(noisy, -1)
    full = (p.exp() * (p - q)).sum(-1)
    assert bool((kl <= full + 1e-5).all())


@pytest.mark.parametrize("precision,positive", [("fp32", False), ("nf4", True)])
def test_agreement_workload_against_stored_fp32_reference(tiny_source, precision, positive) -> None:
    from harness.config import Cell
    from harness.schemes import get_handler
    from harness.workloads import agreement
    from harness.workloads.settings import AgreementSettings, Workloads

    settings = AgreementSettings(enabled=True, max_tokens=256, window=64, top_k=16)
    handler = get_handler(precision)
    cell = Cell(
        experiment="t",
        model="synthetic:tiny-llama",
        precision=precision,
        precision_options=handler.options().model_dump(),
        adapter="none",
        seed=0,
        device="cpu",
        timeout_s=60,
        workloads=Workloads(agreement=settings),
    )
    loaded = handler.load(tiny_source, handler.options(), "cpu")
    rows = {r["metric"]: r for r in agreement.run(loaded, cell, settings)}
    kl, top1 = rows["kl_divergence"], rows["top1_agreement"]
    assert kl["ci_low"] <= kl["value"] <= kl["ci_high"]
    if positive:
        # a random tiny model predicts nearly uniformly, so the divergence is small but real
        assert kl["value"] > 1e-6 and top1["value"] <= 1.0
    else:
        assert kl["value"] == pytest.approx(0.0, abs=1e-9) and top1["value"] == 1.0


def test_one_stored_reference_serves_fewer_windows_and_more_rebuild(
    tiny_source, monkeypatch
) -> None:
    from harness.workloads import agreement
    from harness.workloads.settings import AgreementSettings

    builds = []
    real_build = agreement.build_reference

    def counted(model, windows, k):
        builds.append(len(windows))
        return real_build(model, windows, k)

    monkeypatch.setattr(agreement, "build_reference", counted)
    cell = SimpleNamespace(model="synthetic:tiny-llama", device="cpu")
    ids = torch.arange(512) % 97
    many = AgreementSettings(enabled=True, max_tokens=256, window=64, top_k=8)
    few = many.model_copy(update={"max_tokens": 128})
    assert agreement.reference_key(cell, many, "x") == agreement.reference_key(cell, few, "x")
    first = agreement.load_or_build_reference(cell, many, windows_of(ids, 64, 256))
    fewer = agreement.load_or_build_reference(cell, few, windows_of(ids, 64, 128))
    assert builds == [4]  # the capped cell sliced the stored reference
    assert all(torch.equal(fewer[k], first[k][:2]) for k in first)
    more = many.model_copy(update={"max_tokens": 384})
    agreement.load_or_build_reference(cell, more, windows_of(ids, 64, 384))
    assert builds == [4, 6]


def test_task_rows_keep_skipped_tasks_and_add_intervals() -> None:
    raw = [
        {
            "task": "harness_capitals",
            "metric": "acc",
            "value": 0.75,
            "n": 4,
            "status": "ok",
            "samples": [1, 1, 0, 1],
        },
        {
            "task": "arc_easy",
            "status": "skipped",
            "error": "dataset 'ai2_arc' not available offline",
        },
    ]
    rows = _task_rows(raw, "lm-eval")
    assert rows[0]["metric"] == "acc.harness_capitals" and rows[0]["value"] == 0.75
    assert rows[0]["ci_low"] <= 0.75 <= rows[0]["ci_high"]
    assert rows[1]["status"] == "skipped" and "not available offline" in rows[1]["error"]
