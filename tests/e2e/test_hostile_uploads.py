"""Hostile uploads against a real coordinator process over real gRPC: blobs small enough to
pass the plan's size cap that declare far more than the plan (a zstd bomb, a top-k shape, an
int8 block), a codec chain that is not the plan's, and several streams racing to deliver one
client's update. Each is refused before anything the size of the lie is allocated (the
coordinator's peak RSS barely moves), one update per client and round is folded, and the honest
clients finish the run meanwhile."""

from __future__ import annotations

import json
import threading
import time

import grpc
import pytest
import torch
import zstandard
from safetensors.torch import save as st_save

from fedlora.common.wire.blob import CODEC_TENSOR, HEADER_KEY
from fedlora.common.wire.chunks import sha256
from fedlora.common.wire.codec import Chain
from fedlora.common.wire.protocol import MAX_CHUNK_BYTES, SESSION_METADATA
from fedlora.proto.v1 import fedlora_pb2 as pb
from mallory import Mallory, beat
from procs import finish, records, start_client, start_server, tail

pytestmark = pytest.mark.slow

PLAN_CHAIN = ["topk:0.5", "int8:64", "zstd:3"]
ATTACKS = ["int8_block", "topk_shape", "zstd_bomb", "foreign_chain", "racing_streams"]
HONEST = ["client-0", "client-1"]
RACERS = 6
MAX_GROWTH = 500 << 20  # bytes of peak RSS one refused upload may add (the lies are >= 1 GiB)


def peak_rss(pid: int) -> int:
    """The process's high-water resident set (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


class Attacker(Mallory):
    """Mallory under its own id, crafting blobs the way :func:`pack` does, with edits."""

    def __init__(self, address: str, cid: str):
        super().__init__(address, token=f"t-{cid}")
        self.cid = cid

    def join(self) -> None:
        reply = self.stub.Join(pb.JoinRequest(client_id=self.cid, token=self.token,
                                              profile=pb.DeviceProfile(num_examples=100)),
                               timeout=60, wait_for_ready=True)
        self.session = reply.session_id

    def craft(self, rnd: int, tensors: dict[str, torch.Tensor], chain: Chain, *, n: int = 100,
              desc_edit=None, wire_edit=None, stages: list[str] | None = None) -> bytes:
        wire, meta, sizes = chain.encode(tensors)
        desc = json.loads(meta)
        if stages is not None:
            desc["stages"] = stages
        if desc_edit:
            desc_edit(desc)
        if wire_edit:
            wire_edit(wire)
        packed = zstandard.ZstdCompressor().compress(json.dumps(desc).encode())
        wire[CODEC_TENSOR] = torch.frombuffer(bytearray(packed), dtype=torch.uint8)
        header = {"round": rnd, "client": self.cid, "num_examples": n, "upload_kind": "delta",
                  "codec_chain": desc["stages"], "stage_bytes": sizes}
        return st_save({k: v.contiguous() for k, v in wire.items()},
                       metadata={HEADER_KEY: json.dumps(header, sort_keys=True)})

    def upload_whole(self, rnd: int, data: bytes) -> pb.UploadReply:
        """The whole blob in one message (declaration and data), under the session metadata."""
        assert len(data) <= MAX_CHUNK_BYTES
        msg = pb.UploadChunk(session_id=self.session, round=rnd, total_size=len(data),
                             blob_digest=sha256(data), offset=0, data=data, digest=sha256(data))
        return self.stub.Upload(iter([msg]), timeout=60, metadata=((SESSION_METADATA, self.session),))


def zero_delta(glob: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.zeros_like(v) for k, v in glob.items()}


def attack(a: Attacker, rnd: int, glob: dict[str, torch.Tensor]) -> None:
    """One attack, named by the attacker's id; its status lands in ``a.results[a.cid]``."""
    delta = zero_delta(glob)
    plan_chain = Chain.parse(PLAN_CHAIN)
    first = "0"  # wire name of the first tensor (sorted names)
    if a.cid == "zstd_bomb":  # the int8 codes of tensor 0 inflate to 1 GiB
        bomb = zstandard.ZstdCompressor(level=19).compress(bytes(1 << 30))

        def swap(wire):
            wire[f"{first}.val.q"] = torch.frombuffer(bytearray(bomb), dtype=torch.uint8)
        data = a.craft(rnd, delta, plan_chain, wire_edit=swap)
    elif a.cid == "topk_shape":  # top-k says tensor 0 has 2^28 elements
        def big(desc):
            desc["layers"][0][first]["i"]["shape"] = [1 << 28]
        data = a.craft(rnd, delta, plan_chain, desc_edit=big)
    elif a.cid == "int8_block":  # tensor 0's values in one int8 block of 2^27 (the plan's is 64)
        one_scale = zstandard.ZstdCompressor().compress(torch.zeros(1).numpy().tobytes())

        def wide(desc):
            desc["layers"][1][f"{first}.val"]["i"]["block"] = 1 << 27
            desc["layers"][2][f"{first}.val.scale"]["i"]["shape"] = [1]

        def swap(wire):
            wire[f"{first}.val.scale"] = torch.frombuffer(bytearray(one_scale), dtype=torch.uint8)
        data = a.craft(rnd, delta, plan_chain, desc_edit=wide, wire_edit=swap)
    elif a.cid == "foreign_chain":  # a well-formed blob under a chain the plan did not ask for
        data = a.craft(rnd, delta, Chain.parse(["zstd:3"]))
    else:  # racing_streams: valid, distinct blobs (deltas scaled 1, 2, ...: the count must be the
        # one declared at join) on streams opened first, then all sent at once
        blobs = [a.craft(rnd, {k: v * (i + 1) for k, v in delta.items()}, plan_chain)
                 for i in range(RACERS)]
        go = threading.Event()
        codes: list[grpc.StatusCode] = [grpc.StatusCode.UNKNOWN] * len(blobs)

        def messages(data: bytes):
            go.wait()
            yield pb.UploadChunk(session_id=a.session, round=rnd, total_size=len(data),
                                 blob_digest=sha256(data), offset=0, data=data, digest=sha256(data))

        def send(i: int) -> None:
            try:
                a.stub.Upload(messages(blobs[i]), timeout=60,
                              metadata=((SESSION_METADATA, a.session),))
                codes[i] = grpc.StatusCode.OK
            except grpc.RpcError as e:
                codes[i] = e.code()
        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(blobs))]
        for t in threads:
            t.start()
        time.sleep(1.0)  # every stream open on the coordinator, waiting for its first message
        go.set()
        for t in threads:
            t.join()
        a.results[a.cid] = (codes, "")
        a.stub.Report(pb.ReportRequest(session_id=a.session, round=rnd), timeout=30)
        return
    a._try(a.cid, lambda: a.upload_whole(rnd, data))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_model):
    run_dir = tmp_path_factory.mktemp("hostile") / "run"
    server, address = start_server(run_dir, {
        "model": str(tiny_model), "rounds": 1, "min_clients": 2, "round_retries": 0, "seed": 5,
        "clients": [{"id": c, "token": f"t-{c}"} for c in HONEST + ATTACKS],
        "codec": {"upload": PLAN_CHAIN}, "training": {"max_steps": 2, "batch_size": 8}})
    honest = [start_client(run_dir, address, c, f"t-{c}") for c in HONEST]
    results: dict[str, tuple] = {}
    growth: dict[str, int] = {}
    stop = threading.Event()
    try:
        attackers = [Attacker(address, c) for c in ATTACKS]
        for a in attackers:
            a.join()
            # live while the others attack (a bomb takes a while to make), not given up as silent
            threading.Thread(target=beat, args=(a.stub, a.session, stop), daemon=True).start()
        end = time.time() + 300
        for a in attackers:
            task = a.next_train(end)
            glob = a.download(task)
            before = peak_rss(server.pid)
            attack(a, task.round, glob)
            growth[a.cid] = peak_rss(server.pid) - before
            results.update(a.results)
        codes = finish([server, *honest], timeout=300)
        (run_dir / "peak-rss-growth.json").write_text(json.dumps(growth))  # for whoever reads the run
    finally:
        stop.set()
        for p in (server, *honest):
            if p.poll() is None:
                p.kill()
    return run_dir, results, growth, codes


def test_honest_clients_finish_the_run_meanwhile(hostile):
    run_dir, _, _, codes = hostile
    assert codes == [0, 0, 0], tail(run_dir / "logs" / "coordinator.log")
    done = [r for r in records(run_dir, "round") if r["round"] >= 1]
    assert [r["round"] for r in done] == [1]


def refused_before_decoding(hostile, attack: str, *words: str) -> None:
    """The attack got INVALID_ARGUMENT naming what was wrong, and cost the coordinator less
    than MAX_GROWTH of peak memory."""
    _, results, growth, _ = hostile
    code, msg = results[attack]
    assert growth[attack] < MAX_GROWTH, growth
    assert code == grpc.StatusCode.INVALID_ARGUMENT, msg
    assert all(w in msg for w in words), msg


def test_a_zstd_bomb_is_refused_without_inflating(hostile):
    refused_before_decoding(hostile, "zstd_bomb", "zstd")


def test_a_topk_part_declaring_a_huge_shape_is_refused_before_decoding(hostile):
    refused_before_decoding(hostile, "topk_shape", "topk", "shape")


def test_an_int8_block_other_than_the_plans_is_refused(hostile):
    refused_before_decoding(hostile, "int8_block", "block")


def test_a_chain_other_than_the_plans_is_refused(hostile):
    _, results, _, _ = hostile
    code, msg = results["foreign_chain"]
    assert code == grpc.StatusCode.INVALID_ARGUMENT, msg
    assert "chain" in msg


def test_racing_streams_fold_one_update(hostile):
    run_dir, results, _, _ = hostile
    codes, _ = results["racing_streams"]
    assert grpc.StatusCode.OK in codes
    folds = [r for r in records(run_dir, "upload") if r["client"] == "racing_streams"]
    assert len(folds) == 1, folds
    rnd = [r for r in records(run_dir, "round") if r["round"] == 1][0]
    assert rnd["accepted"] == 3  # the two honest clients and the racer, once
