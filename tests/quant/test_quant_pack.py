import pytest
import torch

from harness.quant.pack import PackedCodes, pack, packed_nbytes, unpack


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 7, 8])
@pytest.mark.parametrize("shape", [(7, 13), (1, 1), (3,), (16, 32), (2, 3, 5)])
@pytest.mark.parametrize("word_dtype", [torch.uint8, torch.int32])
def test_round_trip_exact(bits, shape, word_dtype):
    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, shape, generator=gen, dtype=torch.int64).to(torch.uint8)
    words = pack(codes, bits, word_dtype)
    assert words.dtype == word_dtype
    assert torch.equal(unpack(words, bits, shape), codes)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_packed_size_is_dense(bits):
    codes = torch.zeros(7, 13, dtype=torch.uint8)
    # 91 codes -> 12 runs of 8 codes -> 12 * bits bytes
    assert pack(codes, bits).numel() == 12 * bits == packed_nbytes(91, bits)
    assert pack(codes, bits, torch.int32).numel() == -(-12 * bits // 4)


def test_extreme_values_survive():
    codes = torch.tensor([[7, 0, 7, 7, 0, 7, 7, 7, 1]], dtype=torch.uint8)
    assert torch.equal(unpack(pack(codes, 3), 3, codes.shape), codes)
    full = torch.full((5, 3), 255, dtype=torch.uint8)
    assert torch.equal(unpack(pack(full, 8, torch.int32), 8, full.shape), full)


def test_out_of_range_codes_rejected():
    with pytest.raises(ValueError):
        pack(torch.tensor([8]), 3)
    with pytest.raises(ValueError):
        pack(torch.tensor([1]), 9)


def test_packed_codes_keeps_shape():
    codes = torch.randint(0, 16, (7, 13), generator=torch.Generator().manual_seed(0))
    packed = PackedCodes.from_codes(codes.to(torch.uint8), 4)
    assert packed.shape == (7, 13)
    assert packed.nbytes() == 12 * 4
    assert torch.equal(packed.unpack(), codes.to(torch.uint8))
