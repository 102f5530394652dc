"""Who may take part and who holds which session: the configured clients, joining with a
token, and the session checks every later call starts with.

A session is a random id handed out at join. Every call with it, and every heartbeat, marks
the client as heard (on the :class:`AwakeClock`, so a stalled coordinator blames nobody). A
session is *live* while its client was heard within ``client_timeout_s``:
- a live session belongs to one process: a join from another process (another
  ``JoinRequest.instance``) is refused ALREADY_EXISTS naming the id; the same process joining
  again (a lost reply, a restarted coordinator) gets a fresh session;
- a session silent past the timeout is ended by :meth:`Sessions.expire` (the engine then stops
  waiting for its client), after which the id is free for a new process;
- a session also ends when its client is turned away (:meth:`Sessions.end`).

Locking: the engine's condition is shared, not copied. The methods that change state take
it (it is re-entrant), so the service's worker threads may call in directly and the engine may
call in while it holds it; joins and ends notify it, because the round loop waits on it for
clients. Three readers do without it: :meth:`Sessions.client` (every call's session check), :meth:`Sessions.heard`
(every chunk) and :meth:`Sessions.connected` (every metrics scrape).
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from fedlora.common.config import CLIENT_ID_MAX, ClientEntry, valid_client_id
from fedlora.common.errors import Refused, Status
from fedlora.common.wire.protocol import HEARTBEATS_PER_TIMEOUT
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.server.liveness import AwakeClock
from fedlora.server.records import profile_dict
from fedlora.server.runlog import RunLog
from fedlora.server.strategy import ClientInfo

log = logging.getLogger("fedlora.server")


@dataclass
class ClientState:
    entry: ClientEntry
    partition: int
    session: str = ""
    profile: pb.DeviceProfile | None = None
    joined_at: float = 0.0
    instance: str = ""        # the process holding the session (JoinRequest.instance)
    last_seen: float = 0.0    # AwakeClock time the client was last heard

    def info(self) -> ClientInfo:
        p = self.profile or pb.DeviceProfile()
        return ClientInfo(self.entry.id, self.partition, int(p.num_examples), p)


_STAND_IN = uuid.uuid4().hex  # the token an unknown id is compared with (never matches: "" ids)


def not_admitted(client_id: str) -> Refused:
    """The one refusal of a join without the right credentials, whatever was wrong."""
    shown = client_id[:CLIENT_ID_MAX] + ("..." if len(client_id) > CLIENT_ID_MAX else "")
    return Refused(Status.UNAUTHENTICATED, f"client {shown!r}: unknown client id or wrong token")


class Sessions:
    def __init__(self, entries: list[ClientEntry], spec: pb.RunSpec, runlog: RunLog,
                 cond: threading.Condition, timeout_s: float = 120.0,
                 clock: AwakeClock | None = None,
                 admit: Callable[[ClientState, pb.DeviceProfile], None] | None = None):
        """``admit(client, profile)`` checks a joining client's profile (raising
        :class:`Refused`) before the client gets a session: the engine's admission, the same
        a profile sent with a report goes through, so a rejoin cannot skip it."""
        self.cond = cond
        self.admit = admit
        self.spec = spec
        self.log = runlog
        self.timeout_s = timeout_s
        self.clock = clock or AwakeClock()
        self.clients = {e.id: ClientState(e, i) for i, e in enumerate(entries)}
        self._by_session: dict[str, str] = {}  # session -> client id

    def __len__(self) -> int:
        return len(self.clients)

    def join(self, client_id: str, token: str, profile: pb.DeviceProfile,
             instance: str = "") -> pb.JoinReply:
        """A new session for a configured client holding its token, unless another process
        holds a live one; the reply carries the run spec with the client's data partition and
        heartbeat interval.

        A malformed id, an unknown id and a wrong token get the same answer (UNAUTHENTICATED,
        :func:`not_admitted`), and the token is compared in constant time in each case (with a
        stand-in for an unknown id), so a peer cannot find out which ids exist."""
        with self.cond:
            st = self.clients.get(client_id) if valid_client_id(client_id) else None
            expected = st.entry.token if st is not None else _STAND_IN
            matches = hmac.compare_digest(expected.encode(), token.encode())
            if st is None or (st.entry.token and not matches):
                raise not_admitted(client_id)
            if st.instance != instance and self.live(st):
                raise Refused(Status.ALREADY_EXISTS,
                              f"client id {client_id!r} is in use: another process holds a live "
                              f"session (heard {self.silence(st):.1f}s ago); the id is free once "
                              f"that process has been silent for {self.timeout_s:g}s")
            if self.admit is not None:
                self.admit(st, profile)
            self._by_session.pop(st.session, None)
            st.session = uuid.uuid4().hex
            st.profile = profile
            st.instance = instance
            st.joined_at = time.time()
            st.last_seen = self.clock.now()
            self._by_session[st.session] = client_id
            self.cond.notify_all()
            spec = pb.RunSpec()
            spec.CopyFrom(self.spec)
            spec.partition = st.partition if self.spec.dataset else -1
            spec.heartbeat_s = self.timeout_s / HEARTBEATS_PER_TIMEOUT
            log.info("client %s joined (partition %d, %d examples, %s)", client_id, st.partition,
                     profile.num_examples, profile.accelerator or "?")
            self.log.write("join", client=client_id, partition=st.partition,
                           profile=profile_dict(profile))
            return pb.JoinReply(session_id=st.session, spec=spec)

    def client(self, session: str) -> ClientState:
        """The client holding ``session``, now heard; UNAUTHENTICATED if none does. Without the
        condition, like :meth:`heard`: one key read (a join or an end replaces the key whole)
        and one float store, so every call's session check is answered at once."""
        cid = self._by_session.get(session)
        if cid is None:
            raise Refused(Status.UNAUTHENTICATED, "unknown or expired session: join again")
        st = self.clients[cid]
        st.last_seen = self.clock.now()
        return st

    def check_session(self, session: str) -> str:
        """The id of the client holding ``session`` (now heard); UNAUTHENTICATED if none does."""
        return self.client(session).entry.id

    def heard(self, cid: str) -> None:
        """The client is there (a chunk of its transfer moved). Without the condition: one
        float store, cheap enough for every chunk, and the transfers never wait on the engine."""
        self.clients[cid].last_seen = self.clock.now()

    def silence(self, st: ClientState) -> float:
        """Awake seconds since the client was last heard."""
        return self.clock.now() - st.last_seen

    def live(self, st: ClientState) -> bool:
        """Holds a session and was heard within the timeout."""
        return bool(st.session) and self.silence(st) <= self.timeout_s

    def connected(self) -> int:
        """How many clients hold a live session. Without the condition, like :meth:`heard`: the
        metrics scrape reads it, and a scrape must not wait for an aggregation that holds the
        condition; a join or an end racing with it shows at the next scrape."""
        return sum(1 for st in list(self.clients.values()) if self.live(st))

    def expire(self) -> list[tuple[str, float]]:
        """Ends the sessions silent past the timeout; ``(client id, seconds silent)`` of each.
        Their clients are not planned again until they join again."""
        gone = []
        with self.cond:
            for st in self.clients.values():
                if st.session and not self.live(st):
                    silent = self.silence(st)
                    gone.append((st.entry.id, silent))
                    self.end(st)
                    log.warning("client %s silent for %.0fs (client_timeout_s=%g): session ended",
                                st.entry.id, silent, self.timeout_s)
                    self.log.write("lost", client=st.entry.id, silent_s=round(silent, 1))
        return gone

    def end(self, st: ClientState) -> None:
        """The client must join again before it is planned or heard (it was turned away)."""
        with self.cond:
            self._by_session.pop(st.session, None)
            st.session, st.profile, st.instance = "", None, ""
            self.cond.notify_all()

    def ready(self) -> list[ClientState]:
        """Clients with a live session that have said how many examples they hold (ready to
        plan)."""
        with self.cond:
            return [c for c in self.clients.values()
                    if self.live(c) and c.profile is not None and c.profile.num_examples > 0]

    def info(self, cid: str) -> ClientInfo:
        with self.cond:
            return self.clients[cid].info()
