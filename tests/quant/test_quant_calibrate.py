import torch
from torch import nn

from harness.quant import (
    QuantLinear,
    capture_layer_inputs,
    gptq_quantize,
    layer_stats,
    quantize_decoder_layers,
    replace_linears,
    spqr_quantize,
)


class Block(nn.Module):
    """Residual MLP block; takes an extra keyword like a decoder layer takes its mask."""

    def __init__(self, dim: int, hidden: int, tuple_out: bool) -> None:
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.tuple_out = tuple_out

    def forward(self, x, gate=None, past_key_values=None):
        assert past_key_values is None
        h = torch.relu(self.up(x))
        if gate is not None:
            h = h * gate
        out = x + self.down(h)
        return (out,) if self.tuple_out else out


class Toy(nn.Module):
    def __init__(self, dim: int = 32, hidden: int = 48) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, dim)
        self.layers = nn.ModuleList([Block(dim, hidden, False), Block(dim, hidden, True)])
        self.gate = nn.Parameter(torch.ones(hidden))

    def forward(self, ids):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x, gate=self.gate, past_key_values=None)
            x = x[0] if isinstance(x, tuple) else x
        return x


def _batches():
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, 50, (2, 16), generator=gen) for _ in range(4)]


def test_capture_records_args_and_kwargs():
    model = Toy()
    inputs = capture_layer_inputs(model, model.layers[0], _batches())
    assert len(inputs) == 4
    args, kwargs = inputs[0]
    assert torch.equal(args[0], model.embed(_batches()[0]))
    assert set(kwargs) == {"gate", "past_key_values"}
    assert not model.layers[0]._forward_pre_hooks  # hook removed


def _quantize(model, fn, events=None):
    inputs = capture_layer_inputs(model, model.layers[0], _batches())
    return quantize_decoder_layers(
        model.layers, inputs, fn, progress=events.append if events is not None else None
    )


def test_calibration_replaces_linears_and_stays_close():
    model = Toy()
    ids = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(ids)
    events = []
    quantized = _quantize(model, lambda _n, lin, h: gptq_quantize(lin.weight, h, 4, 16), events)
    assert set(quantized) == {"0.up", "0.down", "1.up", "1.down"}
    assert all(isinstance(m, QuantLinear) for b in model.layers for m in (b.up, b.down))
    assert not any(isinstance(m, nn.Linear) for m in model.layers.modules())
    with torch.no_grad():
        out = model(ids)
    rel = float((out - ref).norm() / ref.norm())
    assert 0 < rel < 0.05
    kinds = [e["kind"] for e in events]
    assert kinds == ["linear", "linear", "block", "linear", "linear", "block"]
    assert all(e["relative_output_error"] < 0.1 for e in events if e["kind"] == "block")


def test_blocks_see_quantized_predecessors():
    """Block 1's Hessian must come from block 0's *quantized* outputs."""
    model = Toy()
    seen = {}

    def fn(name, lin, h):
        seen[name] = h.matrix.clone()
        return gptq_quantize(lin.weight, h, 2, 16)

    _quantize(model, fn)
    ref_model = Toy()
    inputs = capture_layer_inputs(ref_model, ref_model.layers[0], _batches())
    with torch.no_grad():
        fp_hidden = torch.cat([ref_model.layers[0](a[0], **k).reshape(-1, 32) for a, k in inputs])
    fp_h = 2 * fp_hidden.t() @ fp_hidden / fp_hidden.shape[0]
    assert not torch.allclose(seen["1.up"], fp_h, rtol=1e-3)
    assert torch.allclose(seen["1.up"], fp_h, rtol=0.3, atol=0.3 * float(fp_h.abs().max()))


def test_replace_linears_rebuilds_from_saved_state():
    model = Toy()
    quantized = _quantize(model, lambda _n, lin, h: spqr_quantize(lin.weight, h, 3, beta1=16))
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(ids)
    fresh = Toy()
    replace_linears(fresh.layers, quantized)
    assert isinstance(fresh.layers[1].down, QuantLinear)
    assert torch.equal(fresh.layers[0].up.bias, Toy().layers[0].up.bias)
    with torch.no_grad():
        assert torch.equal(fresh(ids), expected)


def test_layer_stats():
    model = Toy()
    quantized = _quantize(model, lambda _n, lin, h: spqr_quantize(lin.weight, h, 3, beta1=16))
    stats = layer_stats(quantized["0.up"], seconds=1.5)
    assert stats["shape"] == [48, 32] and stats["seconds"] == 1.5
    assert 3.0 < stats["measured_bits"] < 8.0
    assert stats["outlier_fraction"] == quantized["0.up"].outlier_fraction
