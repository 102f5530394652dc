"""The round engine: sampling, deadlines, streaming aggregation, refusals, profile admission.

It knows nothing of any federated method: a :class:`Strategy` plans and aggregates, the engine
enforces the plan and keeps the round's books. Sessions live in :mod:`.sessions`, transfer
bytes in :mod:`.transfers` (the engine sees one verified blob per client and round), update
checks in :mod:`.updates`, records in :mod:`.records`. All round state lives behind one
condition variable, shared with the sessions; the gRPC service calls in from a few worker
threads (:mod:`.rpcserver`), the main thread runs :meth:`Engine.run`. The coordinator's evaluation of each aggregate runs beside the next
round (:mod:`.evaluation`): nothing a client waits for depends on it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fedlora.common.config import ServerConfig
from fedlora.common.errors import Refused, Status
from fedlora.common.evaluate import Score
from fedlora.common.launch import seconds_since_launch
from fedlora.common.wire.blob import Blob
from fedlora.common.wire.codec import Chain
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.server import records
from fedlora.server.admission import (EXAMPLES_RECORD, ExampleCounts, check_decline, check_numbers,
                                      check_profile)
from fedlora.server.evaluation import Background
from fedlora.server.liveness import SWEEP_S, AwakeClock
from fedlora.server.rounds import Round, plan_round, planned_bytes, require_open
from fedlora.server.runlog import RunLog
from fedlora.server.sessions import ClientState, Sessions
from fedlora.server.strategy import ClientInfo, Strategy
from fedlora.server.transfers import Transfers
from fedlora.server.updates import DECODE_SLOTS, check_declared, check_update, read_blob

log = logging.getLogger("fedlora.server")


class Engine:
    def __init__(self, cfg: ServerConfig, strategy: Strategy, spec: pb.RunSpec, runlog: RunLog,
                 evaluate_fn: Callable[[], Callable[[], Score]], completed: int = 0,
                 checkpoint: Callable[[int, dict[str, Any] | None], None] | None = None,
                 shard_sizes: Sequence[int] = (), fixed_counts: Mapping[str, int] | None = None,
                 pending: dict[str, Any] | None = None):
        """``evaluate_fn()`` snapshots the strategy's global model and returns what scores that
        snapshot on the test split (called on a thread of its own, beside the next round);
        ``completed``: rounds a resumed run already has (the loop goes on after them);
        ``checkpoint(rnd, pending)`` makes an aggregated round durable before the next one
        opens, with ``pending`` the fields of its round record when that record waits for an
        evaluation (a resumed run gets them back as ``pending`` and evaluates that round again:
        the journal's records end before the round record, so it is written once);
        ``shard_sizes``: the built-in data's shard per partition (none when clients bring
        their own data) and ``fixed_counts`` the example counts a resumed run had fixed: what
        the clients' weights are vouched against (:mod:`.admission`)."""
        self.cfg = cfg
        self.strategy = strategy
        self.spec = spec
        self.log = runlog
        self.evaluate_fn = evaluate_fn  # snapshots the global model; the result scores it
        self.evaluations = Background()  # at most one evaluation in flight
        self.eval_error = ""  # why an evaluation failed (the first reason)
        self.pending = pending
        self.cond = threading.Condition()  # re-entrant: the sessions take it too
        self.clock = AwakeClock()
        self.counts = ExampleCounts(cfg.max_client_examples, shard_sizes, fixed_counts)
        self.sessions = Sessions(cfg.client_entries(), spec, runlog, self.cond,
                                 cfg.client_timeout_s, self.clock, admit=self._admit_profile)
        self.transfers = Transfers(cfg.run_dir / "spool", cfg.spool_bytes)
        self._decoding = threading.BoundedSemaphore(DECODE_SLOTS)  # decoded models held at once
        self.current: Round | None = None
        self.completed = completed
        self.checkpoint = checkpoint
        self.done = False
        self.error = ""
        self.down_chain = Chain.parse(cfg.codec.download)
        self._last_refusals: dict[str, str] = {}
        self.turned_away: set[str] = set()
        # told (under the condition) when :meth:`task` may answer anyone differently: a round
        # opened, or the run ended; the long polls wait for it (:mod:`.service`)
        self.on_board: Callable[[], None] = lambda: None

    # ----------------------------------------------------------------- client-facing calls
    def task(self, session: str) -> pb.Task | None:
        """What a client's long poll answers now: its plan, DONE at the end, or None (nothing
        yet: the poll waits for :attr:`on_board`). Without the condition, so the long polls of a
        thousand clients never queue behind an aggregation or a journal commit that holds it:
        everything it reads only moves forward (the current round, its clients' outcomes, the
        end of the run) and is read an attribute or a key at a time, so it answers what the
        locked version could have answered a moment earlier or later."""
        cid = self.sessions.check_session(session)
        if self.done:
            return pb.Task(kind=pb.Task.DONE, message=self.error or "run complete",
                           failed=bool(self.error))
        r = self.current
        if (r is not None and r.open and cid in r.instructions
                and cid not in r.accepted and cid not in r.refused and cid not in r.lost):
            return pb.Task(kind=pb.Task.TRAIN, round=r.number, plan=r.instructions[cid].plan)
        return None

    def download_blob(self, session: str, rnd: int) -> tuple[str, Blob]:
        """The client's id and the global state it downloads in round ``rnd``."""
        with self.cond:
            cid = self.sessions.check_session(session)
            return cid, require_open(self.current, rnd, cid).blobs[cid]

    def admit_upload(self, session: str, rnd: int, total: int, digest: str) -> str:
        """Checks an upload's declaration before any byte of it is kept; returns the client id."""
        with self.cond:
            cid = self.sessions.check_session(session)
            check_declared(require_open(self.current, rnd, cid), cid, total, digest)
            return cid

    def submit(self, cid: str, rnd: int, data: bytes | memoryview) -> None:
        """Decodes, checks and folds one complete, verified blob; INVALID_ARGUMENT is final.
        At most one update per client and round is folded, whatever streams delivered blobs
        (a second one is refused ALREADY_EXISTS). Checking (every tensor decoded once, one at
        a time) runs outside the lock, at most ``DECODE_SLOTS`` blobs at once, each bounded by
        the plan (:func:`read_blob`); the fold decodes each tensor again as the strategy reads
        it, so a full model's update is never held decoded whole."""
        try:
            with self.cond:
                r0 = self.current  # the round (attempt) this blob is checked and folded for
                inst = (r0.instructions.get(cid)
                        if r0 is not None and r0.number == rnd and r0.open else None)
                vouched = self.counts.get(cid)
                if inst is not None and cid in r0.accepted:
                    raise Refused(Status.ALREADY_EXISTS, f"round {rnd}: update already accepted")
            if inst is None:
                raise Refused(Status.FAILED_PRECONDITION, f"round {rnd} is no longer open")
            with self._decoding:
                tensors, meta = read_blob(data, inst)
                update = check_update(tensors, meta, inst, rnd, cid, vouched)
        except Refused as e:
            if e.code == Status.INVALID_ARGUMENT:
                self._refuse(cid, rnd, e)
            raise
        with self.cond:
            r = self.current
            if r is not r0 or not r.open:  # closed, or a retry attempt opened (same number)
                raise Refused(Status.FAILED_PRECONDITION,
                              f"round {rnd} closed while the update was being checked: late update refused")
            if cid in r.accepted:  # another stream's blob was folded while this one was checked
                raise Refused(Status.ALREADY_EXISTS, f"round {rnd}: update already accepted")
            if cid in r.refused or cid in r.lost:  # declined or refused meanwhile: that is final
                raise Refused(Status.FAILED_PRECONDITION,
                              f"round {rnd}: {cid!r} is done for the round "
                              f"({r.refused.get(cid) or r.lost.get(cid)})")
            self.strategy.fold(rnd, self.sessions.info(cid), update.tensors, update.weight)
            r.accepted[cid] = update.weight
            self.transfers.accepted(cid, rnd, len(data), planned_bytes(inst.expected),
                                    update.stage_bytes)
            log.info("round %d: update from %s accepted (%d bytes, weight %g)", rnd, cid,
                     len(data), update.weight)
            self.log.write("upload", round=rnd, client=cid, bytes=len(data),
                           finished=len(r.accepted) + len(r.refused), planned=len(r.instructions))
            self.cond.notify_all()

    def _refuse(self, cid: str, rnd: int, e: Refused) -> None:
        """Records a final refusal: the client is done for the round, its upload dropped."""
        with self.cond:
            r = self.current
            if r is not None and r.number == rnd:
                r.refused[cid] = e.message
                self.transfers.drop(cid, rnd)
                self.cond.notify_all()
        log.warning("round %d: update from %s refused: %s", rnd, cid, e.message)
        self.log.write("refused", round=rnd, client=cid, code=e.code.name, reason=e.message)

    def report(self, session: str, rnd: int, metrics: dict[str, float],
               profile: pb.DeviceProfile | None, decline: str = "") -> None:
        """A client's metrics for the round, a refreshed profile (admitted as at join), or its
        reason for not training. Nothing of a report is kept unless all of it passes
        :mod:`.admission`."""
        with self.cond:
            st = self.sessions.client(session)
            cid = st.entry.id
            check_numbers("metrics", metrics)
            check_decline(decline)
            if profile is not None and profile.ByteSize() > 0:
                self._admit_profile(st, profile, rnd)
                self.log.write("profile", round=rnd, client=cid, profile=records.profile_dict(profile))
                st.profile = profile
                self.cond.notify_all()
            r = self.current
            if r is not None and r.number == rnd and cid in r.instructions:
                r.reports[cid] = dict(metrics)
                if decline and cid not in r.accepted:
                    r.refused[cid] = f"declined: {decline}"
                    log.warning("round %d: %s declined: %s", rnd, cid, decline)
                    self.log.write("refused", round=rnd, client=cid, code="DECLINED", reason=decline)
                self.cond.notify_all()

    def _admit_profile(self, st: ClientState, profile: pb.DeviceProfile, rnd: int | None = None) -> None:
        """A profile from a join or a report: well-formed (INVALID_ARGUMENT naming the field),
        and, when it declares examples (which makes the client plannable), a count the
        coordinator can vouch for and the strategy's admission (FAILED_PRECONDITION with its
        reason: the client is turned away until it comes back admissible). Called under the
        condition; on a refusal nothing of the profile is kept."""
        cid = st.entry.id
        check_profile(profile, self.cfg.max_client_examples)
        if profile.num_examples == 0:  # nothing declared yet: not planned until it is
            return
        first = self.counts.check(cid, st.partition, profile.num_examples)
        why = self.strategy.admit(dataclasses.replace(st, profile=profile).info())
        if why:
            self.turned_away.add(cid)  # not waited for until it comes back admissible
            self.sessions.end(st)
            self.log.write("refused", round=rnd, client=cid, code="FAILED_PRECONDITION", reason=why)
            raise Refused(Status.FAILED_PRECONDITION, f"client {cid!r} refused: {why}")
        if first:
            self.counts.fix(cid, profile.num_examples)
            self.log.write(EXAMPLES_RECORD, client=cid, num_examples=profile.num_examples)
        self.turned_away.discard(cid)

    # ----------------------------------------------------------------- the round loop
    def _wait_for_clients(self, want: int) -> bool:
        end = time.time() + self.cfg.join_timeout_s
        with self.cond:
            while len(self.sessions.ready()) < want - len(self.turned_away) and not self.done:
                left = end - time.time()
                if left <= 0:
                    return len(self.sessions.ready()) >= self.cfg.min_clients
                self.cond.wait(min(left, SWEEP_S))
                self.sessions.expire()
        return True

    def _sample(self, rnd: int, attempt: int) -> list[ClientInfo]:
        with self.cond:
            pool = sorted(self.sessions.ready(), key=lambda c: c.entry.id)
            k = min(len(pool), max(self.cfg.min_clients, math.ceil(self.cfg.fraction * len(pool))))
            chosen = random.Random(f"{self.cfg.seed}/{rnd}/{attempt}").sample(pool, k)
            return [c.info() for c in sorted(chosen, key=lambda c: c.entry.id)]

    def run(self) -> int:
        """Runs every round; returns a process exit code once the last evaluation has landed
        (the summary is written after it). An evaluation that raises ends the run as any
        coordinator error does: logged, the run failed with its reason."""
        self.clock.start()
        try:
            code = self._run()
        finally:
            self.evaluations.wait()
            self.clock.stop()
        with self.cond:
            if self.eval_error and not self.error:  # the run had ended cleanly meanwhile
                self.error = self.eval_error
        return 1 if self.error else code

    def _run(self) -> int:
        try:
            if self.pending is not None:  # resumed before the journaled round's record landed
                self._evaluate_later(self.completed, self.pending)
            if self.completed >= self.cfg.rounds:  # resumed after the last round's commit
                return self._stop("")
            ready = self._wait_for_clients(len(self.sessions))
            if self.done:
                return 1
            if not ready:
                return self._stop(f"only {len(self.sessions.ready())} of {self.cfg.min_clients} "
                                  f"required clients joined within {self.cfg.join_timeout_s:g}s")
            if self.completed == 0:
                self._evaluate_later(0, None)
            for rnd in range(self.completed + 1, self.cfg.rounds + 1):
                for attempt in range(self.cfg.round_retries + 1):
                    if len(self.sessions.ready()) < self.cfg.min_clients and not self._wait_for_clients(
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
        r = plan_round(self.strategy, self.cfg, self.down_chain, rnd, attempt,
                       self._sample(rnd, attempt), self.transfers.spool_dir)
        # recorded before any client can hear of the round: every record a client's calls cause
        # (and the previous round's, whose evaluation may land meanwhile) comes after it
        self.log.write("round_start", round=rnd, attempt=attempt, planned=len(r.instructions),
                       clients=sorted(r.instructions), since_launch_s=round(seconds_since_launch(), 2))
        log.info("round %d (attempt %d): %d clients planned", rnd, attempt + 1, len(r.instructions))
        with self.cond:
            self.transfers.open(rnd)
            self.current = r
            self.cond.notify_all()
            self.on_board()
        with self.cond:
            while not (r.settled() or self.done) and time.time() < r.deadline:
                self.cond.wait(min(max(0.0, r.deadline - time.time()), SWEEP_S))
                self._give_up_silent(r)
            r.open = False
            r.blobs = {}  # no download starts once closed; the ones under way hold their blob
            accepted = len(r.accepted)
            if self.done:  # stopped from outside (signal): nothing is aggregated
                self.strategy.discard(rnd)
                return False
        missing = sorted(set(r.instructions) - set(r.accepted) - set(r.refused))
        self._last_refusals = dict(r.refused)
        if accepted < self.cfg.min_clients:
            self.strategy.discard(rnd)
            records.write_clients(self.log, r, *self.transfers.stats())
            self.log.write("round_failed", round=rnd, attempt=attempt, accepted=accepted,
                           refused=r.refused, missing=missing)
            log.warning("round %d: only %d update(s) accepted (min %d); refused %s; missing %s", rnd,
                        accepted, self.cfg.min_clients, sorted(r.refused), missing)
            return False
        with self.cond:
            metrics = self.strategy.aggregate(rnd)
        self.evaluations.wait()  # the previous round's record lands before this round's records
        seconds = time.time() - r.started
        up, down = self.transfers.stats()
        clients = records.write_clients(self.log, r, up, down)
        fields = records.round_fields(r, clients, missing, seconds, up, down, metrics)
        self.completed = rnd
        if not self.strategy.server_evaluates:
            score = records.client_score([c for c in clients if c["status"] == "accepted"])
            fields.update(records.score_fields(score, "clients"))
        elif self._evaluates(rnd):  # the record waits for the evaluation; the round does not
            self._checkpoint(rnd, fields)
            self._evaluate_later(rnd, fields)
            return True
        _log_round(self.log.write("round", **fields))
        self._checkpoint(rnd, None)
        return True

    def _evaluates(self, rnd: int) -> bool:
        """Whether the coordinator scores round ``rnd``'s aggregate: every ``evaluate_every``-th
        round and always the last (the run's final accuracy)."""
        return rnd % self.cfg.evaluate_every == 0 or rnd == self.cfg.rounds

    def _checkpoint(self, rnd: int, pending: dict[str, Any] | None) -> None:
        if self.checkpoint is not None:
            with self.cond:  # no round is open: nothing folds into the strategy meanwhile
                self.checkpoint(rnd, pending)

    def _evaluate_later(self, rnd: int, fields: dict[str, Any] | None) -> None:
        """Snapshots the global model now and scores it on a thread of its own; round
        ``rnd``'s record (``fields`` with the scores; round 0's when None) is written when the
        score lands. Called between rounds, after the round is journaled (so the record is
        never in the journaled records while the journal still holds it as pending)."""
        self.evaluations.wait()  # one evaluation copy: the previous snapshot is scored first
        with self.cond:  # nothing folds into the strategy while its model is copied
            score_fn = self.evaluate_fn()

        def job() -> None:
            try:
                score = score_fn()
            except Exception as e:
                log.exception("evaluation of round %d failed", rnd)
                self._evaluation_failed(f"coordinator error: evaluation of round {rnd} failed: {e}")
                return
            if fields is None:
                records.write_initial(self.log, score)
                log.info("round 0 (initial model): test accuracy %.4f", score.accuracy)
            else:
                _log_round(self.log.write("round", **{**fields, **records.score_fields(
                    score, "coordinator")}))

        self.evaluations.submit(f"evaluation of round {rnd}", job)

    def _evaluation_failed(self, why: str) -> None:
        """The run ends with the failure as its error; the round keeps no round record (its
        journal entry still holds it pending: a resumed run evaluates it again)."""
        with self.cond:
            self.eval_error = self.eval_error or why
        self._stop(why, logged=True)

    def _give_up_silent(self, r: Round) -> None:
        """Planned clients gone silent (or whose session ended) are not waited for: the round
        settles with the others, and they are not planned again until they join again."""
        silent = dict(self.sessions.expire())
        for cid in r.instructions:
            if r.finished(cid) or self.sessions.clients[cid].session:
                continue
            why = (f"no call or heartbeat for {silent[cid]:.0f}s" if cid in silent
                   else "its session ended")
            r.lost[cid] = why
            self.transfers.drop(cid, r.number)
            log.warning("round %d: %s given up (missing): %s", r.number, cid, why)

    def stop(self, reason: str) -> None:
        """Ends the run from outside (a signal): the current round is discarded."""
        threading.Thread(target=self._stop, args=(reason,), daemon=True).start()

    def fail(self, reason: str) -> None:
        """Ends the run for a fault inside the coordinator (its run folder stopped taking
        records; the caller logged it); synchronous, so a run whose last record was lost
        cannot end as complete."""
        self._stop(reason, logged=True)

    def _stop(self, error: str, logged: bool = False) -> int:
        with self.cond:
            if self.done:  # the first reason stands
                return 1 if self.error else 0
            self.done = True
            self.error = error
            if self.current is not None:
                self.current.open = False
            self.cond.notify_all()
            self.on_board()
        if error and not logged:
            log.error("%s", error)
        return 1 if error else 0


def _log_round(rec: dict[str, Any]) -> None:
    """The round's log line, once its record (and test figures, if any) exists."""
    scored = (f"test accuracy {rec['test_accuracy']:.4f}, loss {rec['test_loss']:.4f}"
              if "test_accuracy" in rec else "not evaluated")
    log.info("round %d: %d/%d updates, %s, up %.2f MB, down %.2f MB, %.1fs", rec["round"],
             rec["accepted"], rec["planned"], scored, rec["up_mb"], rec["down_mb"], rec["seconds"])
