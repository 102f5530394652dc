"""Update admission: what an upload must declare before any byte is kept, and what a
complete blob must hold; no sockets, no processes."""

import pytest
import torch

from fedlora.common.errors import Refused, Status
from fedlora.common.wire.blob import pack
from fedlora.common.wire.codec import Chain
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.server.rounds import Round
from fedlora.server.strategy import Instruction
from fedlora.server.updates import apply_delta, check_declared, check_update, read_blob

DIGEST = "0" * 64
BASE = {"w": torch.ones(2, 2)}


def a_round(kind: str = "delta") -> Round:
    plan = pb.Plan(round=3, max_upload_bytes=1000, upload_kind=kind)
    inst = Instruction(plan, BASE, {"w": ((2, 2), torch.float32)})
    return Round(3, 0, {"c": inst}, {}, deadline=0.0, started=0.0)


def code(call) -> Status:
    with pytest.raises(Refused) as e:
        call()
    return e.value.code


def test_a_declaration_within_the_plan_is_admitted():
    check_declared(a_round(), "c", 1000, DIGEST)


def test_an_already_accepted_client_may_not_upload_again():
    r = a_round()
    r.accepted["c"] = 1.0
    assert code(lambda: check_declared(r, "c", 10, DIGEST)) == Status.ALREADY_EXISTS


def test_a_client_given_up_on_may_not_upload_in_that_round():
    r = a_round()
    r.lost["c"] = "no call or heartbeat for 31s"
    with pytest.raises(Refused) as e:
        check_declared(r, "c", 10, DIGEST)
    assert e.value.code == Status.FAILED_PRECONDITION and "gave up on 'c'" in e.value.message


def test_a_round_settles_without_waiting_for_a_client_given_up_on():
    r = a_round()
    assert not r.settled()
    r.lost["c"] = "no call or heartbeat for 31s"
    assert r.settled()


def test_an_accepted_client_is_finished_only_with_its_report_in():
    r = a_round()
    r.accepted["c"] = 1.0
    assert not r.finished("c")
    r.reports["c"] = {}
    assert r.finished("c")


def test_an_upload_larger_than_the_plan_allows_is_resource_exhausted():
    assert code(lambda: check_declared(a_round(), "c", 1001, DIGEST)) == Status.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("total,digest", [(0, DIGEST), (10, "abc")])
def test_an_upload_without_size_or_digest_is_invalid(total, digest):
    assert code(lambda: check_declared(a_round(), "c", total, digest)) == Status.INVALID_ARGUMENT


def test_an_undecodable_blob_is_invalid():
    assert code(lambda: read_blob(b"not a blob at all", a_round().instructions["c"])) == Status.INVALID_ARGUMENT


def test_a_delta_update_is_folded_as_weights():
    delta = {"w": torch.full((2, 2), 0.5)}
    data = pack(delta, {"round": 3, "client": "c", "num_examples": 4, "upload_kind": "delta"},
                Chain.parse([])).data
    inst = a_round().instructions["c"]
    u = check_update(*read_blob(data, inst), inst, 3, "c", 4)
    assert u.weight == 4.0
    torch.testing.assert_close(u.tensors["w"], torch.full((2, 2), 1.5))


@pytest.mark.parametrize("header", [
    {"round": 2, "client": "c", "num_examples": 4, "upload_kind": "delta"},
    {"round": 3, "client": "d", "num_examples": 4, "upload_kind": "delta"},
    {"round": 3, "client": "c", "num_examples": 0, "upload_kind": "delta"},
    {"round": 3, "client": "c", "num_examples": 4, "upload_kind": "weights"},
    {"round": 3, "client": "c", "num_examples": 1e308, "upload_kind": "delta"},
    {"round": 3, "client": "c", "num_examples": 5, "upload_kind": "delta"},
    {"round": 3, "client": "c", "upload_kind": "delta"},
])
def test_a_header_that_does_not_match_the_plan_is_invalid(header):
    data = pack({"w": torch.zeros(2, 2)}, header, Chain.parse([])).data
    inst = a_round().instructions["c"]
    assert code(lambda: check_update(*read_blob(data, inst), inst, 3, "c", 4)) == Status.INVALID_ARGUMENT


def test_an_update_from_a_client_without_a_vouched_count_is_invalid():
    data = pack({"w": torch.zeros(2, 2)}, {"round": 3, "client": "c", "num_examples": 4,
                                           "upload_kind": "delta"}, Chain.parse([])).data
    inst = a_round().instructions["c"]
    with pytest.raises(Refused) as e:
        check_update(*read_blob(data, inst), inst, 3, "c", None)
    assert e.value.code == Status.INVALID_ARGUMENT and "no example count" in e.value.message



def test_a_blob_under_a_chain_other_than_the_plans_is_invalid_and_names_the_chain():
    data = pack({"w": torch.zeros(2, 2)}, {"round": 3, "client": "c", "num_examples": 4,
                                           "upload_kind": "delta"}, Chain.parse(["zstd:3"])).data
    with pytest.raises(Refused) as e:
        read_blob(data, a_round().instructions["c"])
    assert e.value.code == Status.INVALID_ARGUMENT and "codec chain ['zstd:3'] is not the plan's []" in e.value.message


def test_a_delta_that_overflows_is_invalid():
    big = {"w": torch.full((2, 2), 3e38)}
    assert code(lambda: apply_delta(big, big)) == Status.INVALID_ARGUMENT


def test_whatever_decoding_a_peers_bytes_raises_is_a_final_refusal(monkeypatch):
    """Bytes from a peer may trip any error in a decoder: it is INVALID_ARGUMENT (final for the
    round, the upload dropped), never an unexpected exception that leaves the client hanging."""
    import fedlora.server.updates as updates

    def crash(data, expect):
        raise MemoryError("a decoder's own failure")

    monkeypatch.setattr(updates, "unpack_lazy", crash)
    with pytest.raises(Refused) as e:
        read_blob(b"anything", a_round().instructions["c"])
    assert e.value.code == Status.INVALID_ARGUMENT and "MemoryError" in e.value.message


def test_an_upload_is_read_a_tensor_at_a_time_and_gives_the_packed_values():
    """What the engine folds is a mapping that decodes each tensor when read (a full model's
    upload is never held decoded whole), with the values that were packed."""
    from collections.abc import Mapping

    inst = a_round("weights").instructions["c"]
    w = torch.arange(4.0).reshape(2, 2)
    data = pack({"w": w}, {"round": 3, "client": "c", "num_examples": 4}, Chain.parse([])).data
    lazy, _ = read_blob(data, inst)
    assert isinstance(lazy, Mapping) and not isinstance(lazy, dict)
    assert list(lazy) == ["w"] and torch.equal(lazy["w"], w)
    assert lazy["w"] is not lazy["w"]  # decoded anew on each read, nothing kept
