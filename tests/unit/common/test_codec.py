"""Codec stages: lossless stages round-trip bit-exactly for every dtype and shape."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedlora.common.wire.blob import BlobError, pack, unpack
from fedlora.common.wire.codec import Chain, parse_stage

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
    assert all(v.dtype == torch.uint8 for v in out.values())


def test_blob_carries_round_client_and_chain_in_its_header():
    tensors = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int64)}
    blob = pack(tensors, {"round": 3, "client": "c1"}, Chain.parse(["zstd:5"]))
    back, meta = unpack(blob.data)
    assert meta["round"] == 3 and meta["client"] == "c1" and meta["codec_chain"] == ["zstd:5"]
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


floats = st.sampled_from([torch.float32, torch.float16, torch.bfloat16])


@settings(max_examples=60, deadline=None)
@given(shape=shapes, dtype=floats, seed=st.integers(0, 2**16), block=st.sampled_from([1, 7, 64, 256]))
def test_int8_error_is_at_most_half_a_step_per_block(shape, dtype, seed, block):
    t = _random(shape, dtype, seed) * 3
    out, meta, _ = Chain.parse([f"int8:{block}"]).encode({"w": t})
    back = Chain.decode(out, meta)["w"]
    assert back.shape == t.shape and back.dtype == t.dtype
    x = t.float().reshape(-1)
    err = (back.float().reshape(-1) - x).abs()
    pad = (-x.numel()) % block
    absmax = torch.nn.functional.pad(x.abs(), (0, pad)).reshape(-1, block).amax(1)
    bound = (absmax / 254).repeat_interleave(block)[: x.numel()]
    # plus the target dtype's own rounding when the input is half precision
    slack = 0 if dtype == torch.float32 else x.abs() * 2**-7
    assert bool((err <= bound * (1 + 1e-5) + slack + 1e-12).all())


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16), target=st.sampled_from(["fp16", "bf16"]))
def test_cast_error_is_half_an_ulp(shape, seed, target):
    t = _random(shape, torch.float32, seed) * 10
    out, meta, sizes = Chain.parse([target]).encode({"w": t})
    back = Chain.decode(out, meta)["w"]
    assert back.dtype == torch.float32 and sizes[-1] == t.numel() * 2
    rel = 2**-11 if target == "fp16" else 2**-8
    assert bool(((back - t).abs() <= t.abs() * rel + 1e-7).all())


def test_fp16_saturates_instead_of_overflowing():
    t = torch.tensor([1e6, -1e6, 3.0])
    out, meta, _ = Chain.parse(["fp16"]).encode({"w": t})
    back = Chain.decode(out, meta)["w"]
    assert torch.isfinite(back).all() and back[0] == 65504 and back[1] == -65504


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16), fraction=st.sampled_from([0.01, 0.1, 0.5, 1.0]))
def test_topk_keeps_the_largest_entries_exactly(shape, seed, fraction):
    t = _random(shape, torch.float32, seed)
    stage = parse_stage(f"topk:{fraction}")
    stage.error_feedback = False
    out, meta, _ = Chain([stage]).encode({"w": t})
    back = Chain.decode(out, meta)["w"]
    assert back.shape == t.shape
    if t.numel() == 0:
        return
    k = max(1, round(fraction * t.numel()))
    kept = back != 0
    assert int(kept.sum()) <= k
    assert torch.equal(back[kept], t[kept])
    if int(kept.sum()) and bool((~kept).any()):
        assert float(t[~kept].abs().max()) <= float(t[kept].abs().min()) + 1e-12


def test_topk_error_feedback_loses_nothing_over_rounds():
    g = torch.Generator().manual_seed(0)
    chain = Chain.parse(["topk:0.05"])
    inputs = [torch.randn(40, 50, generator=g) for _ in range(6)]
    sent = torch.zeros(40, 50)
    for x in inputs:
        out, meta, _ = chain.encode({"w": x})
        sent += Chain.decode(out, meta)["w"]
    residual = chain.stages[0].residual["w"].reshape(40, 50)
    torch.testing.assert_close(sent + residual, sum(inputs), rtol=0, atol=1e-5)


def test_a_chain_restored_from_its_state_encodes_as_the_original():
    """The carried state (top-k's residual) is all a chain needs to go on: a client keeps it by
    round and restores it into a fresh chain when a round is played (again)."""
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(30, 20, generator=g), torch.randn(30, 20, generator=g)
    original = Chain.parse(["topk:0.1", "zstd:3"])
    original.encode({"w": x1})
    state = original.state()
    assert list(state) == ["0/w"] and Chain.parse(["zstd:3"]).state() == {}
    restored = Chain.parse(["topk:0.1", "zstd:3"])
    restored.restore(state)
    a, meta_a, _ = original.encode({"w": x2})
    b, meta_b, _ = restored.encode({"w": x2})
    assert meta_a == meta_b and all(torch.equal(a[k], b[k]) for k in a)
    fresh = Chain.parse(["topk:0.1", "zstd:3"])
    c, _, _ = fresh.encode({"w": x2})
    assert not all(torch.equal(a[k], c[k]) for k in a)  # without it, round 2 would differ


@pytest.mark.parametrize("specs", [["topk:0.1", "int8:64", "zstd:3"], ["fp16", "zstd"], ["int8", "zstd:1"]])
def test_typical_chains_shrink_the_payload_and_name_each_stage(specs):
    t = torch.randn(256, 256)
    blob = pack({"w": t}, {}, Chain.parse(specs))
    back, meta = unpack(blob.data)
    assert back["w"].shape == t.shape and back["w"].dtype == t.dtype
    assert blob.size < t.numel() * 4 * 0.6
    assert len(blob.stage_bytes) == len(specs)
    assert meta["stage_bytes"] == blob.stage_bytes


def test_same_input_gives_the_same_bytes():
    t = {f"t{i}": torch.randn(8, 8) for i in range(5)}
    header = {"round": 1, "client": "c", "version": "round-1", "num_examples": 3}
    assert pack(t, header, Chain.parse(["zstd"])).digest == pack(dict(t), dict(header), Chain.parse(["zstd"])).digest


@settings(max_examples=40, deadline=None)
@given(shape=shapes, dtype=st.sampled_from([torch.int8, torch.int32, torch.int64, torch.bool, torch.uint8]),
       seed=st.integers(0, 2**16),
       chain=st.sampled_from([["fp16"], ["bf16"], ["int8"], ["topk:0.1"], ["topk:0.5", "int8:16", "zstd"]]))
def test_lossy_stages_pass_non_float_tensors_through_exactly(shape, dtype, seed, chain):
    t = _random(shape, dtype, seed)
    out, meta, _ = Chain.parse(chain).encode({"w": t})
    assert torch.equal(Chain.decode(out, meta)["w"], t)
