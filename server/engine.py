"""The round engine: sampling, deadlines, streaming aggregation, refusals, records.

It knows nothing of any federated method: a :class:`Strategy` plans and aggregates, the engine
moves bytes, enforces the plan, and keeps the books. All state lives behind one condition
variable; gRPC handler threads call in, the main thread runs :meth:`Engine.run`.
"""

from __future__ import annotations

import hmac
import logging
import math
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import torch

from fedlora.common.wire.blob import Blob, BlobError, pack, unpack
from fedlora.common.wire.stats import tensor_bytes
from fedlora.common.wire.codec import Chain
from fedlora.common.wire.protocol import HEADER_SLACK
from fedlora.common.wire.stats import TransferStats
from fedlora.common.config import ClientEntry, ServerConfig
from fedlora.common.model import REPORT_PREFIX
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.common.errors import Refused, Status
from fedlora.server.runlog import RunLog
from fedlora.server.strategy import ClientInfo, Instruction, Strategy
from fedlora.common.wire.chunks import PartialUpload
from fedlora.server.validate import validate_update

log = logging.getLogger("fedlora.server")



@dataclass
class ClientState:
    entry: ClientEntry
    partition: int
    session: str = ""
    profile: pb.DeviceProfile | None = None
    joined_at: float = 0.0

    def info(self) -> ClientInfo:
        p = self.profile or pb.DeviceProfile()
        return ClientInfo(self.entry.id, self.partition, int(p.num_examples), p)


@dataclass
class Round:
    number: int
    attempt: int
    instructions: dict[str, Instruction]
    blobs: dict[str, Blob]
    deadline: float
    started: float
    open: bool = True
    accepted: dict[str, float] = field(default_factory=dict)   # client -> weight
    refused: dict[str, str] = field(default_factory=dict)      # final refusals, client -> why
    uploads: dict[str, PartialUpload] = field(default_factory=dict)
    down: dict[str, TransferStats] = field(default_factory=dict)
    up: dict[str, TransferStats] = field(default_factory=dict)
    reports: dict[str, dict[str, float]] = field(default_factory=dict)

    def settled(self) -> bool:
        """Every planned client is done: refused, or accepted and its report is in."""
        return all(c in self.refused or (c in self.accepted and c in self.reports)
                   for c in self.instructions)


class Engine:
    def __init__(self, cfg: ServerConfig, strategy: Strategy, spec: pb.RunSpec, runlog: RunLog,
                 evaluate_fn):
        self.cfg = cfg
        self.strategy = strategy
        self.spec = spec
        self.log = runlog
        self.evaluate_fn = evaluate_fn  # () -> Score of the strategy's global model
        self.cond = threading.Condition()
        self.clients = {e.id: ClientState(e, i) for i, e in enumerate(cfg.client_entries())}
        self.sessions: dict[str, str] = {}  # session -> client id
        self.current: Round | None = None
        self.completed = 0
        self.done = False
        self.error = ""
        self.down_chain = Chain.parse(cfg.codec.download)
        self.history: list[dict[str, Any]] = []
        self._last_refusals: dict[str, str] = {}
        self.turned_away: set[str] = set()

    # ----------------------------------------------------------------- client-facing calls
    def join(self, client_id: str, token: str, profile: pb.DeviceProfile) -> pb.JoinReply:
        with self.cond:
            st = self.clients.get(client_id)
            if st is None:
                raise Refused(Status.PERMISSION_DENIED, f"unknown client id {client_id!r}")
            if st.entry.token and not hmac.compare_digest(st.entry.token, token):
                raise Refused(Status.UNAUTHENTICATED, f"wrong token for client {client_id!r}")
            if st.session:
                self.sessions.pop(st.session, None)
            st.session = uuid.uuid4().hex
            st.profile = profile
            st.joined_at = time.time()
            self.sessions[st.session] = client_id
            self.cond.notify_all()
            spec = pb.RunSpec()
            spec.CopyFrom(self.spec)
            spec.partition = st.partition if self.spec.dataset else -1
            log.info("client %s joined (partition %d, %d examples, %s)", client_id, st.partition,
                     profile.num_examples, profile.accelerator or "?")
            self.log.write("join", client=client_id, partition=st.partition,
                           profile=_profile_dict(profile))
            return pb.JoinReply(session_id=st.session, spec=spec)

    def _client(self, session: str) -> ClientState:
        cid = self.sessions.get(session)
        if cid is None:
            raise Refused(Status.UNAUTHENTICATED,
                          "unknown or expired session: join again")
        return self.clients[cid]

    def check_session(self, session: str) -> str:
        with self.cond:
            return self._client(session).entry.id

    def task(self, session: str, last_round: int, wait_s: float) -> pb.Task:
        end = time.time() + max(0.0, min(wait_s, 60.0))
        with self.cond:
            while True:
                st = self._client(session)
                if self.done:
                    return pb.Task(kind=pb.Task.DONE, message=self.error or "run complete")
                r = self.current
                if (r is not None and r.open and st.entry.id in r.instructions
                        and st.entry.id not in r.accepted and st.entry.id not in r.refused):
                    return pb.Task(kind=pb.Task.TRAIN, round=r.number,
                                   plan=r.instructions[st.entry.id].plan)
                left = end - time.time()
                if left <= 0:
                    return pb.Task(kind=pb.Task.WAIT, retry_after_ms=200)
                self.cond.wait(left)

    def _open_round_for(self, session: str, rnd: int) -> tuple[ClientState, Round]:
        st = self._client(session)
        r = self.current
        if r is None or r.number != rnd:
            now = r.number if r else 0
            raise Refused(Status.FAILED_PRECONDITION,
                          f"round {rnd} is not open (current round: {now})")
        if not r.open:
            raise Refused(Status.FAILED_PRECONDITION,
                          f"round {rnd} is closed (deadline passed or aggregated): late update refused")
        if st.entry.id not in r.instructions:
            raise Refused(Status.FAILED_PRECONDITION,
                          f"client {st.entry.id!r} is not planned for round {rnd}")
        return st, r

    def download_blob(self, session: str, rnd: int) -> tuple[str, Blob]:
        with self.cond:
            st, r = self._open_round_for(session, rnd)
            return st.entry.id, r.blobs[st.entry.id]

    def record_download(self, cid: str, rnd: int, sent: int, grpc_bytes: int, seconds: float) -> None:
        with self.cond:
            r = self.current
            if r is None or r.number != rnd:
                return
            blob = r.blobs[cid]
            t = r.down.setdefault(cid, TransferStats(tensor_bytes=blob.tensor_bytes,
                                                stage_bytes=list(blob.stage_bytes)))
            t.payload_bytes += sent
            t.grpc_bytes += grpc_bytes
            t.seconds += seconds

    def upload_start(self, session: str, rnd: int, total: int, digest: str) -> tuple[str, PartialUpload]:
        with self.cond:
            st, r = self._open_round_for(session, rnd)
            cid = st.entry.id
            if cid in r.accepted:
                raise Refused(Status.ALREADY_EXISTS, f"round {rnd}: update already accepted")
            if cid in r.refused:
                raise Refused(Status.FAILED_PRECONDITION,
                              f"round {rnd}: update already refused ({r.refused[cid]})")
            limit = r.instructions[cid].plan.max_upload_bytes
            if total <= 0:
                raise Refused(Status.INVALID_ARGUMENT, "upload declares no size")
            if total > limit:
                raise Refused(Status.RESOURCE_EXHAUSTED,
                              f"upload of {total} bytes exceeds the plan's limit of {limit} bytes")
            if len(digest) != 64:
                raise Refused(Status.INVALID_ARGUMENT, "upload declares no sha256 blob digest")
            part = r.uploads.get(cid)
            if part is None or part.total_size != total or part.blob_digest != digest:
                part = PartialUpload(total, digest)  # a different blob: start over
                r.uploads[cid] = part
            return cid, part

    def upload_chunk(self, part: PartialUpload, offset: int, data: bytes, digest: str) -> None:
        with self.cond:
            part.add(offset, data, digest)

    def upload_status(self, session: str, rnd: int) -> pb.UploadStatusReply:
        with self.cond:
            st = self._client(session)
            r = self.current
            if r is None or r.number != rnd:
                return pb.UploadStatusReply()
            if st.entry.id in r.accepted:
                part = r.uploads.get(st.entry.id)
                size = part.total_size if part else 0
                return pb.UploadStatusReply(acked_offset=size, total_size=size, complete=True)
            part = r.uploads.get(st.entry.id)
            if part is None:
                return pb.UploadStatusReply()
            return pb.UploadStatusReply(acked_offset=part.acked, total_size=part.total_size)

    def record_upload_io(self, cid: str, rnd: int, received: int, grpc_bytes: int, seconds: float) -> None:
        with self.cond:
            r = self.current
            if r is None or r.number != rnd:
                return
            t = r.up.setdefault(cid, TransferStats())
            t.payload_bytes += received
            t.grpc_bytes += grpc_bytes
            t.seconds += seconds

    def upload_complete(self, cid: str, rnd: int, part: PartialUpload) -> None:
        """Verifies, decodes, validates and folds a whole upload; refusals here are final."""
        try:
            data = part.verified()
        except Refused:
            with self.cond:
                part.buffer.clear()  # resend from zero
            raise
        try:
            tensors, meta = unpack(data)
            with self.cond:
                r = self.current
                inst = r.instructions[cid] if r is not None and r.number == rnd else None
            if inst is None:
                raise Refused(Status.FAILED_PRECONDITION, f"round {rnd} is no longer open")
            if meta.get("round") != rnd or meta.get("client") != cid:
                raise Refused(Status.INVALID_ARGUMENT,
                              f"blob header names round {meta.get('round')!r} and client "
                              f"{meta.get('client')!r}, expected {rnd} and {cid!r}")
            weight = meta.get("num_examples")
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
                raise Refused(Status.INVALID_ARGUMENT,
                              "blob header lacks a positive num_examples")
            weight = float(weight)
            if meta.get("upload_kind", "weights") != (inst.plan.upload_kind or "weights"):
                raise Refused(Status.INVALID_ARGUMENT,
                              f"blob is a {meta.get('upload_kind')!r} upload, the plan asks for "
                              f"{inst.plan.upload_kind!r}")
            validate_update(tensors, inst.expected)
            if inst.plan.upload_kind == "delta":
                tensors = apply_delta(inst.tensors, tensors)
        except BlobError as e:
            self._refuse(cid, rnd, Status.INVALID_ARGUMENT, f"undecodable update: {e}")
        except Refused as e:
            if e.code == Status.INVALID_ARGUMENT:
                self._refuse(cid, rnd, e.code, e.message)
            raise
        with self.cond:
            r = self.current
            if r is None or r.number != rnd or not r.open:
                raise Refused(Status.FAILED_PRECONDITION,
                              f"round {rnd} closed while the update was being checked: late update refused")
            self.strategy.fold(rnd, self.clients[cid].info(), tensors, weight)
            r.accepted[cid] = weight
            r.up.setdefault(cid, TransferStats()).tensor_bytes = tensor_bytes(tensors)
            r.up[cid].stage_bytes = [int(b) for b in meta.get("stage_bytes", [])]
            log.info("round %d: update from %s accepted (%d bytes, weight %g)", rnd, cid,
                     part.total_size, weight)
            self.log.write("upload", round=rnd, client=cid, bytes=part.total_size,
                           finished=len(r.accepted) + len(r.refused), planned=len(r.instructions))
            self.cond.notify_all()

    def _refuse(self, cid: str, rnd: int, code: Status, why: str) -> None:
        with self.cond:
            r = self.current
            if r is not None and r.number == rnd:
                r.refused[cid] = why
                r.uploads.pop(cid, None)
                self.cond.notify_all()
        log.warning("round %d: update from %s refused: %s", rnd, cid, why)
        self.log.write("refused", round=rnd, client=cid, code=code.name, reason=why)
        raise Refused(code, why)

    def report(self, session: str, rnd: int, metrics: dict[str, float],
               profile: pb.DeviceProfile | None, decline: str = "") -> None:
        with self.cond:
            st = self._client(session)
            cid = st.entry.id
            if profile is not None and profile.ByteSize() > 0:
                self.log.write("profile", round=rnd, client=cid, profile=_profile_dict(profile))
                candidate = ClientState(st.entry, st.partition, st.session, profile, st.joined_at)
                why = self.strategy.admit(candidate.info())
                if why:
                    self.turned_away.add(cid)  # not waited for until it comes back admissible
                    self.sessions.pop(st.session, None)
                    st.session, st.profile = "", None
                    self.log.write("refused", round=rnd, client=cid, code="FAILED_PRECONDITION", reason=why)
                    self.cond.notify_all()
                    raise Refused(Status.FAILED_PRECONDITION, f"client {cid!r} refused: {why}")
                st.profile = profile
                self.turned_away.discard(cid)
                self.cond.notify_all()
            r = self.current
            if r is not None and r.number == rnd and cid in r.instructions:
                r.reports[cid] = dict(metrics)
                if decline and cid not in r.accepted:
                    r.refused[cid] = f"declined: {decline}"
                    log.warning("round %d: %s declined: %s", rnd, cid, decline)
                    self.log.write("refused", round=rnd, client=cid, code="DECLINED", reason=decline)
                self.cond.notify_all()

    # ----------------------------------------------------------------- the round loop
    def _joined(self) -> list[ClientState]:
        """Clients with a session that have said how many examples they hold (ready to plan)."""
        return [c for c in self.clients.values()
                if c.session and c.profile is not None and c.profile.num_examples > 0]

    def _wait_for_clients(self, want: int) -> bool:
        end = time.time() + self.cfg.join_timeout_s
        with self.cond:
            while len(self._joined()) < want - len(self.turned_away) and not self.done:
                left = end - time.time()
                if left <= 0:
                    return len(self._joined()) >= self.cfg.min_clients
                self.cond.wait(min(left, 1.0))
        return True

    def _sample(self, rnd: int, attempt: int) -> list[ClientInfo]:
        with self.cond:
            pool = sorted(self._joined(), key=lambda c: c.entry.id)
            k = min(len(pool), max(self.cfg.min_clients, math.ceil(self.cfg.fraction * len(pool))))
            chosen = random.Random(f"{self.cfg.seed}/{rnd}/{attempt}").sample(pool, k)
            return [c.info() for c in sorted(chosen, key=lambda c: c.entry.id)]

    def _open(self, rnd: int, attempt: int, clients: list[ClientInfo]) -> Round:
        instructions = self.strategy.configure(rnd, clients)
        blobs: dict[str, Blob] = {}
        packed: dict[int, Blob] = {}
        deadline = time.time() + self.cfg.deadline_s
        for cid, inst in instructions.items():
            key = id(inst.tensors)
            if key not in packed:
                packed[key] = pack(inst.tensors, {"round": rnd, "client": "coordinator",
                                                  "version": f"round-{rnd}"}, self.down_chain)
            blob = packed[key]
            blobs[cid] = blob
            raw = sum(math.prod(s) * torch.empty((), dtype=d).element_size()
                      for s, d in inst.expected.values())
            inst.plan.max_upload_bytes = int(raw * self.cfg.max_upload_factor) + HEADER_SLACK
            inst.plan.deadline_unix = deadline
            inst.plan.global_state.CopyFrom(pb.BlobRef(
                version=f"round-{rnd}", digest=blob.digest, size=blob.size,
                codec=pb.Codec(stages=list(blob.codec))))
        return Round(rnd, attempt, instructions, blobs, deadline, time.time())

    def run(self) -> int:
        """Runs every round; returns a process exit code."""
        try:
            ready = self._wait_for_clients(len(self.clients))
            if self.done:
                return 1
            if not ready:
                return self._stop(f"only {len(self._joined())} of {self.cfg.min_clients} required "
                                  f"clients joined within {self.cfg.join_timeout_s:g}s")
            score = self.evaluate_fn()
            self.log.write("round", round=0, test_accuracy=score.accuracy, test_loss=score.loss,
                           planned=0, accepted=0, seconds=0.0, up_mb=0.0, down_mb=0.0)
            log.info("round 0 (initial model): test accuracy %.4f", score.accuracy)
            for rnd in range(1, self.cfg.rounds + 1):
                for attempt in range(self.cfg.round_retries + 1):
                    if len(self._joined()) < self.cfg.min_clients and not self._wait_for_clients(
                            self.cfg.min_clients):
                        return self._stop(f"round {rnd}: fewer than {self.cfg.min_clients} clients connected")
                    if self._play_round(rnd, attempt):
                        break
                    if self.done:
                        return 1
                else:
                    why = "; ".join(f"{c}: {w}" for c, w in sorted(self._last_refusals.items()))
                    return self._stop(
                        f"round {rnd}: fewer than min_clients={self.cfg.min_clients} updates were "
                        f"accepted in {self.cfg.round_retries + 1} attempt(s); run stopped"
                        + (f" (refused: {why})" if why else ""))
            return self._stop("")
        except Exception as e:  # the run must end with a record and released clients
            log.exception("engine failed")
            return self._stop(f"coordinator error: {e}")

    def _play_round(self, rnd: int, attempt: int) -> bool:
        clients = self._sample(rnd, attempt)
        r = self._open(rnd, attempt, clients)
        with self.cond:
            self.current = r
            self.cond.notify_all()
        self.log.write("round_start", round=rnd, attempt=attempt, planned=len(r.instructions),
                       clients=sorted(r.instructions))
        log.info("round %d (attempt %d): %d clients planned", rnd, attempt + 1, len(r.instructions))
        with self.cond:
            self.cond.wait_for(lambda: r.settled() or self.done,
                               timeout=max(0.0, r.deadline - time.time()))
            r.open = False
            accepted = dict(r.accepted)
            if self.done:  # stopped from outside (signal): nothing is aggregated
                self.strategy.discard(rnd)
                return False
        missing = sorted(set(r.instructions) - set(r.accepted) - set(r.refused))
        self._last_refusals = dict(r.refused)
        if len(accepted) < self.cfg.min_clients:
            self.strategy.discard(rnd)
            self._write_clients(r)
            self.log.write("round_failed", round=rnd, attempt=attempt, accepted=len(accepted),
                           refused=r.refused, missing=missing)
            log.warning("round %d: only %d update(s) accepted (min %d); refused %s; missing %s", rnd,
                        len(accepted), self.cfg.min_clients, sorted(r.refused), missing)
            return False
        with self.cond:
            metrics = self.strategy.aggregate(rnd)
        seconds = time.time() - r.started
        records = self._write_clients(r)
        accepted_recs = [rec for rec in records if rec["status"] == "accepted"]
        score = (self.evaluate_fn() if self.strategy.server_evaluates
                 else _client_score(accepted_recs))
        losses = [(rec["train_loss"], rec["weight"]) for rec in records
                  if rec.get("train_loss") is not None and rec["status"] == "accepted"]
        train_loss = (sum(l * w for l, w in losses) / sum(w for _, w in losses)) if losses else None
        rec = self.log.write(
            "round", round=rnd, attempt=attempt, planned=len(r.instructions), accepted=len(accepted),
            refused=sorted(r.refused), missing=missing, test_accuracy=score.accuracy,
            test_loss=score.loss, train_loss=train_loss, seconds=round(seconds, 3),
            personal_accuracy=_weighted(accepted_recs, "local_accuracy"),
            evaluated_by="coordinator" if self.strategy.server_evaluates else "clients",
            up_mb=sum(t.payload_bytes for t in r.up.values()) / 1e6,
            down_mb=sum(t.payload_bytes for t in r.down.values()) / 1e6,
            dp_epsilon=max((rec["metrics"].get("dp_epsilon", 0.0) for rec in records), default=None) or None,
            up_wire_mb=_sum_mb(rec["up"]["iface_bytes"] for rec in records if rec["status"] == "accepted"),
            down_wire_mb=_sum_mb(rec["down"]["iface_bytes"] for rec in records
                                 if rec["status"] == "accepted" and rec["down"]["payload_bytes"]),
            strategy=metrics)
        self.history.append(rec)
        self.completed = rnd
        log.info("round %d: %d/%d updates, test accuracy %.4f, loss %.4f, up %.2f MB, down %.2f MB, %.1fs",
                 rnd, len(accepted), len(r.instructions), score.accuracy, score.loss, rec["up_mb"],
                 rec["down_mb"], seconds)
        return True

    def _write_clients(self, r: Round) -> list[dict[str, Any]]:
        out = []
        for cid in sorted(r.instructions):
            status = ("accepted" if cid in r.accepted else "refused" if cid in r.refused
                      else "missing")
            rep = r.reports.get(cid, {})
            down_t = r.down.get(cid, TransferStats())
            if rep.get("client_down_seconds"):  # the receiver's clock: the sender's ends when
                down_t.seconds = rep["client_down_seconds"]  # its buffers fill, not on arrival
            up, down = r.up.get(cid, TransferStats()).as_dict(), down_t.as_dict()
            # the client's own interface counters: tx while uploading, rx while downloading
            up["iface_bytes"] = _int_or_none(rep.get("iface_up_tx_bytes"))
            down["iface_bytes"] = _int_or_none(rep.get("iface_down_rx_bytes"))
            out.append(self.log.write(
                "client", round=r.number, attempt=r.attempt, client=cid, status=status,
                reason=r.refused.get(cid), weight=r.accepted.get(cid), up=up, down=down,
                train_loss=rep.get("train_loss"), local_accuracy=rep.get("local_accuracy"),
                metrics=rep))
        return out

    def stop(self, reason: str) -> None:
        """Ends the run from outside (a signal): the current round is discarded."""
        threading.Thread(target=self._stop, args=(reason,), daemon=True).start()

    def _stop(self, error: str) -> int:
        with self.cond:
            if self.done:  # the first reason stands
                return 1 if self.error else 0
            self.done = True
            self.error = error
            if self.current is not None:
                self.current.open = False
            self.cond.notify_all()
        if error:
            log.error("%s", error)
        return 1 if error else 0


def apply_delta(base: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights from a delta upload: the round's global tensors plus the client's difference.
    Reports (``fedlora.*``) ride along as they are."""
    missing = sorted(n for n in set(delta) - set(base) if not n.startswith(REPORT_PREFIX))
    if missing:
        raise Refused(Status.INVALID_ARGUMENT,
                      f"delta for {missing[0]!r}, which the round's global state does not hold")
    out = {}
    for name, d in delta.items():
        if name not in base:
            out[name] = d
            continue
        out[name] = (base[name].to(torch.float64) + d.to(torch.float64)).to(base[name].dtype)
        if not bool(torch.isfinite(out[name]).all()):
            raise Refused(Status.INVALID_ARGUMENT, f"tensor {name!r}: delta overflows")
    return out


def _weighted(records: list[dict[str, Any]], key: str) -> float | None:
    """The weight-averaged (n_k) value of a reported metric, or None if nobody reported it."""
    pairs = [(rec["metrics"][key], rec["weight"]) for rec in records
             if rec.get("metrics", {}).get(key) is not None and rec.get("weight")]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def _client_score(records: list[dict[str, Any]]):
    from fedlora.common.evaluate import Score

    acc, loss = _weighted(records, "test_accuracy"), _weighted(records, "test_loss")
    return Score(float("nan") if acc is None else acc, float("nan") if loss is None else loss, 0)


def _sum_mb(values) -> float | None:
    """Total MB, or None when any value is missing (the level was not measurable)."""
    vals = list(values)
    return None if not vals or any(v is None for v in vals) else sum(vals) / 1e6


def _int_or_none(v: float | None) -> int | None:
    return None if v is None or v < 0 else int(v)


def _profile_dict(p: pb.DeviceProfile) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(p, preserving_proto_field_name=True)

