"""The streaming safetensors writer: the very bytes safetensors itself writes, without the two
whole-file copies it makes on the way; and a blob packed into a spool file is the in-memory
blob, byte for byte."""

from __future__ import annotations

import io
import tracemalloc

import pytest
import torch
from safetensors.torch import save as st_save

from fedlora.common.wire.blob import pack, unpack
from fedlora.common.wire.chunks import sha256
from fedlora.common.wire.codec import Chain
from fedlora.common.wire.stwrite import write

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
          torch.int16, torch.int8, torch.uint8, torch.bool)


def _assorted() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {f"layer.{i}.é/{str(d)[6:]}": (torch.randn(3, i + 1, generator=g) * 5).to(d)
           for i, d in enumerate(DTYPES)}
    out.update({"scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4),
                "transposed": torch.randn(4, 3, generator=g).t()})
    return out


@pytest.mark.parametrize("metadata", [None, {"fedlora": '{"round":1,"note":"ü"}'}])
def test_writes_the_bytes_safetensors_writes(metadata):
    tensors = _assorted()
    out = io.BytesIO()
    size, digest = write(tensors, metadata, out)
    expected = st_save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    assert out.getvalue() == expected
    assert (size, digest) == (len(expected), sha256(expected))


def test_an_unsupported_dtype_is_refused_naming_the_tensor():
    with pytest.raises(ValueError, match="'odd'.*complex64"):
        write({"odd": torch.zeros(2, dtype=torch.complex64)}, None, io.BytesIO())


def test_writing_makes_no_copy_of_the_tensors():
    tensors = {f"w{i}": torch.ones(1 << 18) for i in range(8)}  # 8 MiB
    sink = open("/dev/null", "wb")
    tracemalloc.start()
    try:
        write(tensors, {"fedlora": "{}"}, sink)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        sink.close()
    assert peak < (1 << 20)  # safetensors.torch.save: 16 MiB of Python bytes for these 8 MiB


def test_a_spooled_blob_is_the_in_memory_blob_and_leaves_no_file(tmp_path):
    tensors = _assorted()
    header = {"round": 2, "client": "coordinator"}
    for chain in (Chain(), Chain.parse(["zstd:3"])):
        mem = pack(tensors, header, chain)
        spooled = pack(tensors, header, chain, spool=tmp_path)
        assert isinstance(spooled.data, memoryview) and bytes(spooled.data) == mem.data
        assert (spooled.digest, spooled.size, spooled.stage_bytes) == (mem.digest, mem.size, mem.stage_bytes)
        got, meta = unpack(bytes(spooled.data))
        assert meta["round"] == 2 and all(torch.equal(got[k], v) for k, v in tensors.items())
    assert list(tmp_path.iterdir()) == []  # the file is unlinked: it goes with its last view


def test_a_spool_that_cannot_be_written_falls_back_to_memory(tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    blob = pack({"w": torch.ones(8)}, {"round": 1}, Chain(), spool=blocked)
    assert isinstance(blob.data, bytes) and blob.digest == sha256(blob.data)


def _rss_file_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


def test_serving_a_spooled_blob_gives_its_pages_back(tmp_path):
    """Chunks copied out of a spool file leave the process's resident set: a coordinator
    serving a full model from disk does not grow by the model."""
    from fedlora.common.wire.chunks import iter_chunks

    blob = pack({f"w{i}": torch.ones(1 << 20) for i in range(16)}, {"round": 1}, Chain(),
                spool=tmp_path)  # 64 MiB
    before = _rss_file_kib()
    served = sum(len(piece) for _, piece in iter_chunks(blob.data, 1 << 20))
    assert served == blob.size
    assert _rss_file_kib() - before < 8 << 10


def test_decoding_a_spooled_blob_gives_its_pages_back(tmp_path):
    from fedlora.common.wire.blob import unpack_lazy
    from fedlora.common.wire.codec import Expectation

    tensors = {f"w{i}": torch.ones(1 << 20) for i in range(16)}
    blob = pack(tensors, {"round": 1}, Chain(), spool=tmp_path)
    expect = Expectation.of([], {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()})
    lazy, _ = unpack_lazy(blob.data, expect)
    before = _rss_file_kib()
    assert all(torch.equal(lazy[k], v) for k, v in tensors.items())
    assert _rss_file_kib() - before < 8 << 10
