"""Updates are checked against the plan before any strategy sees them."""

import pytest
import torch

from fedlora.common.errors import Refused, Status
from fedlora.common.wire.chunks import PartialUpload
from fedlora.server.validate import validate_update
from fedlora.common.wire.chunks import sha256

EXPECTED = {"a": ((2, 3), torch.float32), "b": ((4,), torch.float32)}


def ok():
    return {"a": torch.zeros(2, 3), "b": torch.ones(4)}


def refusal(update):
    with pytest.raises(Refused) as e:
        validate_update(update, EXPECTED)
    assert e.value.code == Status.INVALID_ARGUMENT
    return e.value.message


def test_matching_update_passes():
    validate_update(ok(), EXPECTED)


def test_missing_tensor():
    u = ok(); del u["b"]
    assert "missing 1 tensor(s), e.g. 'b'" in refusal(u)


def test_extra_tensor():
    u = ok(); u["c"] = torch.ones(1)
    assert "not in the plan, e.g. 'c'" in refusal(u)


def test_wrong_shape():
    u = ok(); u["a"] = torch.zeros(3, 2)
    assert "tensor 'a': shape (3, 2), the plan says (2, 3)" in refusal(u)


def test_wrong_dtype():
    u = ok(); u["b"] = torch.ones(4, dtype=torch.float16)
    assert "dtype torch.float16" in refusal(u)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite(bad):
    u = ok(); u["a"][1, 2] = bad
    assert "1 non-finite value(s)" in refusal(u)


def _chunked(data, size):
    return [(o, data[o:o + size]) for o in range(0, len(data), size)]


def test_upload_takes_chunks_in_order_only():
    data = bytes(range(256)) * 10
    up = PartialUpload(len(data), sha256(data))
    chunks = _chunked(data, 1000)
    up.add(*chunks[0], sha256(chunks[0][1]))
    with pytest.raises(Refused) as e:  # skips ahead
        up.add(*chunks[2], sha256(chunks[2][1]))
    assert e.value.code == Status.OUT_OF_RANGE and "skips ahead" in e.value.message
    with pytest.raises(Refused) as e:  # overlaps
        up.add(*chunks[0], sha256(chunks[0][1]))
    assert "overlaps" in e.value.message
    with pytest.raises(Refused) as e:  # corrupt
        up.add(chunks[1][0], b"x" + chunks[1][1][1:], sha256(chunks[1][1]))
    assert e.value.code == Status.DATA_LOSS
    assert up.acked == 1000  # what was acknowledged survives every refusal
    for off, c in chunks[1:]:
        up.add(off, c, sha256(c))
    assert up.complete and up.verified() == data


def test_whole_blob_digest_is_checked():
    data = b"abc" * 100
    up = PartialUpload(len(data), sha256(b"something else"))
    up.add(0, data, sha256(data))
    with pytest.raises(Refused) as e:
        up.verified()
    assert e.value.code == Status.DATA_LOSS
