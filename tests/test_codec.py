"""Codec stages: lossless stages round-trip bit-exactly for every dtype and shape."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.common.blob import BlobError, pack, unpack
from fedlora.common.codec import Chain, parse_stage

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8,
          torch.int32, torch.int64, torch.bool]


def _random(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    return torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, generator=g).to(dtype)


shapes = st.lists(st.integers(0, 7), min_size=0, max_size=3).map(tuple)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16),
       chain=st.sampled_from([[], ["identity"], ["zstd"], ["zstd:1", "zstd:19"], ["identity", "zstd:3"]]))
def test_lossless_chains_round_trip_exactly(shape, dtype, seed, chain):
    t = _random(shape, dtype, seed)
    out, meta, _ = Chain.parse(chain).encode({"w": t})
    back = Chain.decode(out, meta)["w"]
    assert back.dtype == t.dtype and back.shape == t.shape
    assert torch.equal(back, t)


def test_zstd_shrinks_compressible_tensors():
    t = torch.zeros(64, 1024)
    out, _, sizes = Chain.parse(["zstd"]).encode({"w": t})
    assert sizes[-1] < t.numel() * 4 / 100
    assert out["w"].dtype == torch.uint8


def test_blob_carries_round_client_and_chain_in_its_header():
    tensors = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int64)}
    blob = pack(tensors, {"fedlora.round": "3", "fedlora.client": "c1"}, Chain.parse(["zstd:5"]))
    back, meta = unpack(blob.data)
    assert meta["fedlora.round"] == "3" and meta["fedlora.client"] == "c1"
    assert blob.codec == ("zstd:5",)
    assert blob.tensor_bytes == 3 * 5 * 4 + 7 * 8
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)


def test_unknown_stage_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown codec stage 'lz9'"):
        parse_stage("lz9")
    with pytest.raises(ValueError, match="zstd level"):
        parse_stage("zstd:99")


def test_garbage_blob_is_a_blob_error():
    with pytest.raises(BlobError):
        unpack(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(BlobError):
        unpack(b"abc")
