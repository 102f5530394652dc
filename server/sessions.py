"""Who may take part and who holds which session: the configured clients, joining with a
token, and the session checks every later call starts with.

A session is a random id handed out at join; joining again replaces it, so a restarted client
never shares its id with a stale process. A session ends when its client joins again or is
turned away (:meth:`Sessions.end`).

Locking: the engine's condition is shared, not copied. Every method takes it (it is
re-entrant), so handler threads may call in directly and the engine may call in while it
holds it; joins and ends notify it, because the round loop waits on it for clients.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import uuid
from dataclasses import dataclass

from fedlora.common.config import ClientEntry
from fedlora.common.errors import Refused, Status
from fedlora.proto.v1 import fedlora_pb2 as pb
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

    def info(self) -> ClientInfo:
        p = self.profile or pb.DeviceProfile()
        return ClientInfo(self.entry.id, self.partition, int(p.num_examples), p)


class Sessions:
    def __init__(self, entries: list[ClientEntry], spec: pb.RunSpec, runlog: RunLog,
                 cond: threading.Condition):
        self.cond = cond
        self.spec = spec
        self.log = runlog
        self.clients = {e.id: ClientState(e, i) for i, e in enumerate(entries)}
        self._by_session: dict[str, str] = {}  # session -> client id

    def __len__(self) -> int:
        return len(self.clients)

    def join(self, client_id: str, token: str, profile: pb.DeviceProfile) -> pb.JoinReply:
        """A new session for a configured client holding its token (compared in constant
        time); the reply carries the run spec with the client's data partition."""
        with self.cond:
            st = self.clients.get(client_id)
            if st is None:
                raise Refused(Status.PERMISSION_DENIED, f"unknown client id {client_id!r}")
            if st.entry.token and not hmac.compare_digest(st.entry.token, token):
                raise Refused(Status.UNAUTHENTICATED, f"wrong token for client {client_id!r}")
            self._by_session.pop(st.session, None)
            st.session = uuid.uuid4().hex
            st.profile = profile
            st.joined_at = time.time()
            self._by_session[st.session] = client_id
            self.cond.notify_all()
            spec = pb.RunSpec()
            spec.CopyFrom(self.spec)
            spec.partition = st.partition if self.spec.dataset else -1
            log.info("client %s joined (partition %d, %d examples, %s)", client_id, st.partition,
                     profile.num_examples, profile.accelerator or "?")
            self.log.write("join", client=client_id, partition=st.partition,
                           profile=profile_dict(profile))
            return pb.JoinReply(session_id=st.session, spec=spec)

    def client(self, session: str) -> ClientState:
        with self.cond:
            cid = self._by_session.get(session)
            if cid is None:
                raise Refused(Status.UNAUTHENTICATED, "unknown or expired session: join again")
            return self.clients[cid]

    def check_session(self, session: str) -> str:
        """The id of the client holding ``session``; UNAUTHENTICATED if none does."""
        return self.client(session).entry.id

    def end(self, st: ClientState) -> None:
        """The client must join again before it is planned or heard (it was turned away)."""
        with self.cond:
            self._by_session.pop(st.session, None)
            st.session, st.profile = "", None
            self.cond.notify_all()

    def ready(self) -> list[ClientState]:
        """Clients with a session that have said how many examples they hold (ready to plan)."""
        with self.cond:
            return [c for c in self.clients.values()
                    if c.session and c.profile is not None and c.profile.num_examples > 0]

    def info(self, cid: str) -> ClientInfo:
        with self.cond:
            return self.clients[cid].info()
