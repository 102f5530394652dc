"""``fedlora tokens``: a secret per client id, written where only its owner can read it.

The file is a config fragment, ``clients: [{id, token}, ...]``: the coordinator loads it as
(part of) its config, and each client is given its own entry's token. With a token per client
no client can join as another (a shared ``token`` lets any holder take any id).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import yaml

from fedlora.common.config import ClientEntry, ConfigError, valid_client_id

TOKEN_BYTES = 32  # secrets.token_urlsafe(32): 256 bits


def client_ids(spec: str) -> list[str]:
    """``N`` (client-0..N-1) or comma-separated ids, each a valid client id."""
    spec = spec.strip()
    ids = [f"client-{i}" for i in range(int(spec))] if spec.isdigit() else [c for c in spec.split(",") if c]
    bad = [c for c in ids if not valid_client_id(c)]
    if not ids or bad:
        raise ConfigError(f"config error: --clients: not valid client ids: {bad or spec!r} (letters, "
                          "digits, _ . -, not starting with a dot, at most 64 characters)")
    if len(set(ids)) != len(ids):
        raise ConfigError("config error: --clients: duplicate client id")
    return ids


def new_token() -> str:
    """A URL-safe secret that does not start with ``-`` (it would read as a flag on a command
    line: ``--token -x...``)."""
    while (token := secrets.token_urlsafe(TOKEN_BYTES)).startswith("-"):
        pass
    return token


def make_tokens(ids: list[str]) -> list[ClientEntry]:
    return [ClientEntry(id=cid, token=new_token()) for cid in ids]


def write_tokens(path: Path, ids: list[str]) -> list[ClientEntry]:
    """New tokens for ``ids`` in ``path`` (created mode 0600, replaced if it exists)."""
    entries = make_tokens(ids)
    text = yaml.safe_dump({"clients": [e.model_dump() for e in entries]}, sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return entries
