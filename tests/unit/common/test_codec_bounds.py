"""Decoding an upload is bounded by the plan: every shape, dtype, block size and byte count the
blob declares is checked against the Expectation (the plan's chain and tensors) before it is
decoded, and refused with a message naming the tensor. No sockets, no processes."""

import json

import pytest
import torch
import zstandard
from safetensors.torch import save as st_save

from fedlora.common.wire.blob import CODEC_TENSOR, HEADER_KEY, BlobError, pack, unpack
from fedlora.common.wire.codec import Chain, Expectation, inflate, CodecError

W = "layer.w"
TENSORS = {W: torch.linspace(-1, 1, 96).reshape(8, 12), "layer.b": torch.arange(5, dtype=torch.float32)}
SPECS = {n: (tuple(t.shape), t.dtype) for n, t in TENSORS.items()}
HEADER = {"round": 1, "client": "c", "num_examples": 3}
SPARSE = ["topk:0.5", "int8:64", "zstd:3"]


def expect(chain: list[str]) -> Expectation:
    return Expectation.of(chain, SPECS)


def craft(chain: list[str], desc_edit=None, wire_edit=None, codec_bytes: bytes | None = None) -> bytes:
    """What :func:`pack` writes, with the description or wire tensors edited first."""
    wire, meta, _ = Chain.parse(chain).encode(dict(TENSORS))
    desc = json.loads(meta)
    if desc_edit:
        desc_edit(desc)
    if wire_edit:
        wire_edit(wire)
    packed = codec_bytes if codec_bytes is not None else zstandard.ZstdCompressor().compress(
        json.dumps(desc).encode())
    wire[CODEC_TENSOR] = torch.frombuffer(bytearray(packed), dtype=torch.uint8)
    return st_save({k: v.contiguous() for k, v in wire.items()},
                   metadata={HEADER_KEY: json.dumps(HEADER)})


def refusal(data: bytes, chain: list[str]) -> str:
    with pytest.raises(BlobError) as e:
        unpack(data, expect(chain))
    return str(e.value)


def as_bytes(buf: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(buf), dtype=torch.uint8)


@pytest.mark.parametrize("chain", [[], ["zstd:3"], SPARSE, ["fp16", "zstd:9"], ["int8:16"]])
def test_an_honest_blob_under_the_plans_chain_decodes_as_without_an_expectation(chain):
    blob = pack(TENSORS, HEADER, Chain.parse(chain))
    checked, header = unpack(blob.data, expect(chain))
    trusted, _ = unpack(blob.data)
    assert header["client"] == "c" and set(checked) == set(TENSORS)
    assert all(torch.equal(checked[n], trusted[n]) for n in TENSORS)


def test_an_upload_held_in_a_bytearray_decodes_without_a_bytes_copy_of_it():
    blob = pack(TENSORS, HEADER, Chain.parse(["zstd:3"]))
    tensors, _ = unpack(memoryview(bytearray(blob.data)), expect(["zstd:3"]))
    assert torch.equal(tensors[W], TENSORS[W])


def test_a_chain_other_than_the_plans_is_refused():
    blob = pack(TENSORS, HEADER, Chain.parse(["zstd:3"]))
    assert "codec chain ['zstd:3'] is not the plan's ['zstd:9']" in refusal(blob.data, ["zstd:9"])


def test_a_tensor_the_plan_does_not_name_is_refused_before_decoding():
    def rename(desc):
        desc["names"][0] = "smuggled"
    assert "tensor 'smuggled' is not in the plan" in refusal(craft(["zstd:3"], rename), ["zstd:3"])


def test_a_zstd_part_declaring_more_bytes_than_its_tensor_is_refused_before_inflating():
    bomb = zstandard.ZstdCompressor().compress(bytes(4 << 20))  # frame declares 4 MiB

    def swap(wire):
        wire["1"] = as_bytes(bomb)  # layer.w: 96 float32 = 384 bytes
    msg = refusal(craft(["zstd:3"], wire_edit=swap), ["zstd:3"])
    assert f"tensor {W!r}" in msg and "declares 4194304 bytes" in msg and "exactly 384" in msg


def test_a_zstd_part_longer_than_zstd_can_make_of_its_tensor_is_refused_unread():
    bomb = zstandard.ZstdCompressor().compress(bytes(16 << 20))  # 531 bytes

    def swap(wire):
        wire["1"] = as_bytes(bomb)
    msg = refusal(craft(["zstd:3"], wire_edit=swap), ["zstd:3"])
    assert f"tensor {W!r}: wire part is uint8 [{len(bomb)}], the plan says uint8 [<= 512] (zstd of 384 bytes)" in msg


def test_a_zstd_frame_without_a_declared_size_is_inflated_only_up_to_its_tensor():
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(4 << 20))

    def swap(wire):
        wire["1"] = as_bytes(bomb)
    msg = refusal(craft(["zstd:3"], wire_edit=swap), ["zstd:3"])
    assert f"tensor {W!r}" in msg and "does not inflate to exactly 384 bytes" in msg


def test_inflate_refuses_a_frame_that_is_short_of_its_exact_size():
    with pytest.raises(CodecError, match="declares 10 bytes"):
        inflate(zstandard.ZstdCompressor().compress(bytes(10)), 12, exact=True)


def test_a_topk_part_declaring_a_shape_other_than_the_plans_is_refused():
    def big(desc):
        desc["layers"][0]["1"]["i"]["shape"] = [1 << 30]
    msg = refusal(craft(SPARSE, big), SPARSE)
    assert f"tensor {W!r}: topk declares shape [1073741824], the plan says float32 [8, 12]" in msg


def test_topk_sending_more_entries_than_the_plans_fraction_is_refused():
    def more(wire):
        wire["1.idx"] = torch.ones(96, dtype=torch.int32)  # k is 48 of 96
    msg = refusal(craft(["topk:0.5"], wire_edit=more), ["topk:0.5"])
    assert f"tensor '{W}.idx'" in msg and "the plan says int32 [<= 48]" in msg


def test_an_int8_block_other_than_the_plans_chain_is_refused():
    def wide(desc):
        desc["layers"][1]["1.val"]["i"]["block"] = 1 << 29
    msg = refusal(craft(SPARSE, wide), SPARSE)
    assert f"tensor '{W}.val': int8 block 536870912, the plan's chain says 64" in msg


def test_int8_scales_that_do_not_match_the_block_count_are_refused():
    def fewer(wire):
        wire["1.scale"] = torch.ones(1)  # 96 values in blocks of 16 need 6 scales
    msg = refusal(craft(["int8:16"], wire_edit=fewer), ["int8:16"])
    assert f"tensor '{W}.scale': wire part is float32 [1], the plan says float32 [6]" in msg


def test_a_wire_part_of_another_dtype_is_refused():
    def wider(wire):
        wire["1.q"] = wire["1.q"].to(torch.int16)
    assert "wire part is int16 [96]" in refusal(craft(["int8:16"], wire_edit=wider), ["int8:16"])


def test_a_dtype_other_than_the_plans_is_refused_where_a_stage_declares_it():
    def double(desc):
        desc["layers"][0]["1"]["i"]["dtype"] = "float64"
    msg = refusal(craft(["zstd:3"], double), ["zstd:3"])
    assert f"tensor {W!r}: zstd declares dtype 'float64', the plan says float32" in msg


def test_a_codec_description_is_inflated_only_up_to_what_the_plan_needs():
    bomb = zstandard.ZstdCompressor().compress(b" " * (8 << 20))
    msg = refusal(craft(["zstd:3"], codec_bytes=bomb), ["zstd:3"])
    assert "zstd frame declares 8388608 bytes" in msg and "at most" in msg


def test_the_description_limit_grows_with_the_plan_not_a_fixed_size():
    small = Expectation.of(["zstd:3"], {"w": ((4,), torch.float32)})
    many = Expectation.of(["zstd:3"], {f"w{i}": ((4,), torch.float32) for i in range(1000)})
    assert small.description_bytes() < 64 << 10 < many.description_bytes() < 4 << 20


def raw_blob(st_header: dict | list | str, body: bytes = b"") -> bytes:
    """A safetensors file with any header text a peer may write."""
    text = st_header if isinstance(st_header, str) else json.dumps(st_header)
    return len(text.encode()).to_bytes(8, "little") + text.encode() + body


def test_a_header_longer_than_the_plan_needs_is_refused_before_it_is_parsed():
    limit = expect(SPARSE).header_bytes()
    bomb = raw_blob("[" + ",".join(["{}"] * (limit // 3 + 1)) + "]")  # parses to a big list
    assert "the plan's tensors need at most" in refusal(bomb, SPARSE)


def test_an_honest_header_fits_the_plans_header_bound():
    blob = pack(TENSORS, HEADER, Chain.parse(SPARSE)).data
    assert int.from_bytes(blob[:8], "little") <= expect(SPARSE).header_bytes()


@pytest.mark.parametrize("shape", [[1] * 9, [2 ** 49], [-1], [1e400], ["x"]])
def test_a_shape_out_of_range_is_refused_before_any_product_is_formed(shape):
    bad = raw_blob({"x": {"dtype": "F32", "shape": shape, "data_offsets": [0, 4]}}, b"\0" * 4)
    assert "malformed" in refusal(bad, SPARSE)


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,                        # deeper than the parser recurses
    json.dumps({"__metadata__": {HEADER_KEY: 5}}),         # the metadata entry not a string
    json.dumps({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 1e400]}}),
], ids=["deep", "metadata-not-a-string", "offset-overflow"])
def test_malformed_headers_are_a_blob_error_not_a_crash(text):
    refusal(raw_blob(text), SPARSE)  # BlobError (INVALID_ARGUMENT upstream), nothing else
