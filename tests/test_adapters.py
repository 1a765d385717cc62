"""The adapter axis: names, settings in the cell id, LoRA shapes on every kind of layer, skips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from harness.adapters import LoraQuantLinear, attach_lora, target_names
from harness.config import expand, load_experiment
from harness.errors import ConfigError, SkipCell
from harness.quant import rtn_quantize
from harness.quant.linear import QuantLinear
from harness.schemes import get_handler
from tests.conftest import TINY_EXPERIMENT, write_experiment

# tiny-llama linears per decoder layer as (in, out); 2 layers; the lm_head is never adapted.
SHAPES = {
    "q_proj": (64, 64),
    "k_proj": (64, 32),
    "v_proj": (64, 32),
    "o_proj": (64, 64),
    "gate_proj": (64, 128),
    "up_proj": (64, 128),
    "down_proj": (128, 64),
}
LAYERS = 2


def _options(r: int, targets: str | list[str] = "all-linear", dropout: float = 0.0) -> dict:
    return {"r": r, "alpha": 16.0, "dropout": dropout, "target_modules": targets, "bias": "none"}


def _load(source, precision: str):
    handler = get_handler(precision)
    return handler.load(source, handler.options(), "cpu")


def _trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["lora-rx", "qlora", "lora-r0", "lora", "LoRA-r8"])
def test_bad_adapter_names_list_the_allowed_forms(tmp_path: Path, name: str) -> None:
    path = write_experiment(tmp_path / "e.yaml", TINY_EXPERIMENT + f"adapters: [none, {name}]\n")
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    message = str(info.value)
    assert f"unknown adapter '{name}'" in message
    assert "allowed: none, lora-r<N>, rslora-r<N>, dora-r<N>, full" in message


def test_lora_settings_resolve_into_the_cell_and_its_id(tmp_path: Path) -> None:
    text = TINY_EXPERIMENT.replace("[fp32, bf16]", "[fp32]") + "adapters: [none, lora-r8, full]\n"
    cells = expand(load_experiment(write_experiment(tmp_path / "a.yaml", text)), "cpu")
    none, lora, full = cells
    assert none.adapter_options == {} and full.adapter_options == {}
    assert lora.adapter_options == _options(8, dropout=0.05)
    assert lora.id.startswith("tiny-llama__fp32__lora-r8__s0__")
    qv = text + "lora: {alpha: 32, dropout: 0, target_modules: qv}\n"
    changed = expand(load_experiment(write_experiment(tmp_path / "b.yaml", qv)), "cpu")
    assert changed[1].adapter_options["target_modules"] == ["q_proj", "v_proj"]
    assert changed[1].id != lora.id  # the LoRA settings are part of the measurement
    assert changed[0].id == none.id and changed[2].id == full.id  # ... of LoRA cells only


def test_unknown_lora_key_names_the_allowed_ones(tmp_path: Path) -> None:
    path = write_experiment(tmp_path / "e.yaml", TINY_EXPERIMENT + "lora: {rank: 8}\n")
    with pytest.raises(ConfigError, match="lora.rank: unknown key; allowed keys: alpha, dropout"):
        load_experiment(path)


@pytest.mark.parametrize("r", [1, 4, 16])
def test_trainable_params_are_r_times_in_plus_out_over_all_linear_layers(tiny_source, r) -> None:
    loaded = _load(tiny_source, "fp32")
    model, rows = attach_lora(loaded.model, _options(r))
    expected = LAYERS * sum(r * (i + o) for i, o in SHAPES.values())
    assert _trainable(model) == expected
    assert rows[-1]["value"] == LAYERS * len(SHAPES) and rows[-1]["method"] == "lora:peft"


def test_qv_targets_only_query_and_value(tiny_source) -> None:
    model, _ = attach_lora(_load(tiny_source, "fp32").model, _options(8, ["q_proj", "v_proj"]))
    expected = LAYERS * 8 * (sum(SHAPES["q_proj"]) + sum(SHAPES["v_proj"]))
    assert _trainable(model) == expected
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_lora_on_nf4_counts_the_same_and_reports_the_kbit_upcast(tiny_source) -> None:
    model, rows = attach_lora(_load(tiny_source, "nf4-dq").model, _options(4))
    assert _trainable(model) == LAYERS * sum(4 * (i + o) for i, o in SHAPES.values())
    by_metric = {r["metric"]: r["value"] for r in rows}
    # the bnb scheme keeps unquantized parameters in fp32, so nothing is upcast here
    assert by_metric["kbit_upcast_to_fp32"] == 0.0 and by_metric["kbit_upcast_bytes"] == 0.0


def test_kbit_upcast_is_measured_when_norms_are_half(tiny_source) -> None:
    model = _load(tiny_source, "nf4").model
    norm = model.model.norm
    norm.weight.data = norm.weight.data.to(torch.bfloat16)
    _, rows = attach_lora(model, _options(4))
    by_metric = {r["metric"]: r["value"] for r in rows}
    assert by_metric["kbit_upcast_to_fp32"] == 1.0
    assert by_metric["kbit_upcast_params"] == 64
    assert by_metric["kbit_upcast_bytes"] == 64 * 2  # bf16 -> fp32 adds 2 bytes each
    assert norm.weight.dtype == torch.float32


def _quant_linear(rows: int = 48, cols: int = 64) -> QuantLinear:
    torch.manual_seed(0)
    return QuantLinear(rtn_quantize(torch.randn(rows, cols), bits=4, group_size=32))


def test_lora_quant_linear_starts_equal_to_the_base_and_trains_only_the_adapter() -> None:
    base = _quant_linear()
    before = {n: b.clone() for n, b in base.named_buffers()}
    layer = LoraQuantLinear(base, r=4, alpha=8.0, dropout=0.0)
    x = torch.randn(3, 64)
    assert torch.equal(layer(x), base(x))  # B starts at zero
    assert sorted(n for n, _ in layer.named_parameters()) == ["lora_A.weight", "lora_B.weight"]
    assert _trainable(layer) == 4 * (64 + 48)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2)
    target = torch.randn(3, 48)
    for _ in range(3):
        loss = (layer(x) - target).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert not torch.equal(layer(x), base(x))
    for name, buf in base.named_buffers():
        assert torch.equal(buf, before[name]), name


def test_harness_quant_linears_get_the_harness_wrapper(tiny_source) -> None:
    model = _load(tiny_source, "fp32").model
    for name in target_names(model, "all-linear"):
        linear = model.get_submodule(name)
        parent, _, leaf = name.rpartition(".")
        quant = QuantLinear(rtn_quantize(linear.weight.data, bits=4, group_size=32))
        setattr(model.get_submodule(parent), leaf, quant)
    model, rows = attach_lora(model, _options(8))
    assert rows[-1]["method"] == "lora:harness-quantlinear"
    assert isinstance(model.model.layers[0].mlp.down_proj, LoraQuantLinear)
    assert _trainable(model) == LAYERS * sum(8 * (i + o) for i, o in SHAPES.values())
    ids = torch.arange(16).view(1, 16)
    model(input_ids=ids, labels=ids).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in n for n in with_grad)


def _cell(tmp_path: Path, precision: str, adapter: str, training: str):
    text = (
        TINY_EXPERIMENT.replace("[fp32, bf16]", f"[{precision}]")
        .replace("perplexity: {max_tokens: 256, window: 64}", "perplexity: {enabled: false}")
        .replace("footprint: {}", f"footprint: {{enabled: false}}\n  training: {training}")
        + f"adapters: [{adapter}]\n"
    )
    return expand(load_experiment(write_experiment(tmp_path / "e.yaml", text)), "cpu")[0]


def test_full_fine_tuning_on_a_quantized_precision_is_skipped(tmp_path, synthetic_cache) -> None:
    from harness.runner.cell import run_cell

    record = run_cell(_cell(tmp_path, "nf4", "full", "{enabled: true}"))
    assert record["status"] == "skipped"
    assert "full fine-tuning" in record["error"] and "quantized" in record["error"]


def test_paged_optimizer_on_cpu_is_skipped_with_the_reason(tmp_path, synthetic_cache) -> None:
    from harness.runner.cell import run_cell

    training = "{enabled: true, optimizer: paged_adamw_32bit}"
    record = run_cell(_cell(tmp_path, "fp32", "lora-r4", training))
    assert record["status"] == "skipped"
    assert "paged_adamw_32bit" in record["error"] and "needs CUDA" in record["error"]


def test_full_unfreezes_every_parameter_of_a_dense_model(tmp_path, synthetic_cache) -> None:
    from harness.adapters import attach
    from harness.models import resolve

    cell = _cell(tmp_path, "fp32", "full", "{enabled: false}")
    loaded = _load(resolve(cell.model), "fp32")
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    attach(loaded, cell)
    assert all(p.requires_grad for p in loaded.model.parameters())
    assert isinstance(loaded.model.lm_head, nn.Linear)


def _method_options(r: int, **switch) -> dict:
    return {**_options(r), **switch}


def test_rslora_scales_by_alpha_over_sqrt_r_and_trains_what_lora_trains(tiny_source) -> None:
    model, rows = attach_lora(_load(tiny_source, "fp32").model, _method_options(4, use_rslora=True))
    layer = model.base_model.model.model.layers[0].mlp.down_proj
    assert layer.scaling["default"] == pytest.approx(16.0 / 2.0)  # alpha / sqrt(4), not / 4
    assert rows[-1]["method"] == "rslora:peft"
    assert _trainable(model) == LAYERS * sum(4 * (i + o) for i, o in SHAPES.values())


def test_dora_adds_one_magnitude_per_output_row(tiny_source) -> None:
    model, rows = attach_lora(_load(tiny_source, "fp32").model, _method_options(4, use_dora=True))
    assert rows[-1]["method"] == "dora:peft"
    lora = LAYERS * sum(4 * (i + o) for i, o in SHAPES.values())
    magnitudes = LAYERS * sum(o for _, o in SHAPES.values())
    assert _trainable(model) == lora + magnitudes


def test_dora_on_int8_and_on_harness_quant_linears_is_refused(tiny_source) -> None:
    with pytest.raises(SkipCell, match="DoRA on bitsandbytes int8"):
        attach_lora(_load(tiny_source, "int8").model, _method_options(4, use_dora=True))
    model = _load(tiny_source, "fp32").model
    for name in target_names(model, "all-linear"):
        parent, _, leaf = name.rpartition(".")
        quant = QuantLinear(rtn_quantize(model.get_submodule(name).weight.data, 4, 32))
        setattr(model.get_submodule(parent), leaf, quant)
    with pytest.raises(SkipCell, match="QuantLinear"):
        attach_lora(model, _method_options(4, use_dora=True))


def test_rslora_on_harness_quant_linears_uses_its_scaling() -> None:
    base = QuantLinear(rtn_quantize(torch.randn(48, 64), bits=4, group_size=32))
    assert LoraQuantLinear(base, 16, 16.0, 0.0, rslora=True).scaling == pytest.approx(4.0)
    assert LoraQuantLinear(base, 16, 16.0, 0.0).scaling == pytest.approx(1.0)


def test_method_switches_enter_the_cell_only_for_their_method(tmp_path: Path) -> None:
    from harness.config import LoraSettings, adapter_options

    assert "use_dora" not in adapter_options("lora-r8", LoraSettings())
    assert adapter_options("dora-r8", LoraSettings())["use_dora"] is True
    assert adapter_options("rslora-r8", LoraSettings())["use_rslora"] is True
    assert adapter_options("full", LoraSettings()) == {}
