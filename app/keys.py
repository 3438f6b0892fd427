"""API keys: created, listed, revoked and verified.

Only a SHA-256 of each secret is kept. A secret is `vl_<prefix>_<random>`:
the prefix finds the row, then the hash is compared in constant time.
The random part carries 256 bits, so a fast hash is enough (nothing to
brute-force the way a password would be).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    ARRAY,
    Connection,
    Select,
    String,
    Table,
    Text,
    any_,
    bindparam,
    exists,
    insert,
    literal_column,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError

from app.db.engine import Database
from app.db.statement import Statement
from app.db.tables import api_keys
from app.errors import Forbidden, NotFound, Unauthorized, ValidationFailed

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,99}$")


class Role(StrEnum):
    READ = "read"
    WRITE = "write"
    WORKER = "worker"
    ADMIN = "admin"


#: What each role may do, by the permission a route asks for.
GRANTS: dict[Role, frozenset[str]] = {
    Role.READ: frozenset({"read"}),
    Role.WRITE: frozenset({"read", "write"}),
    Role.WORKER: frozenset({"read", "worker"}),
    Role.ADMIN: frozenset({"read", "write", "worker", "admin"}),
}


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role

    def may(self, permission: str) -> bool:
        return permission in GRANTS[self.role]

    def require(self, permission: str) -> None:
        """Raises `Forbidden` unless this principal's role grants `permission`."""
        if not self.may(permission):
            raise Forbidden(
                f"key {self.name!r} has role {self.role.value!r}, which may not {permission}"
            )


@dataclass(frozen=True)
class KeyInfo:
    name: str
    role: Role
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(db: Database, name: str, role: Role, now: datetime) -> str:
    """Create a key and return its secret, which is shown once and never stored."""
    if not NAME_RE.match(name):
        raise ValidationFailed("key name must be 1-100 characters: letters, digits, and _ . : @ -")
    prefix = secrets.token_hex(6)
    secret = f"vl_{prefix}_{secrets.token_urlsafe(32)}"
    try:
        with db.write() as conn:
            conn.execute(
                insert(api_keys).values(
                    name=name,
                    prefix=prefix,
                    key_hash=_hash(secret),
                    role=role.value,
                    created_at=now,
                )
            )
    except IntegrityError as exc:
        raise ValidationFailed(f"a key named {name!r} already exists") from exc
    return secret


def list_keys(db: Database) -> list[KeyInfo]:
    with db.read() as conn:
        rows = conn.execute(
            select(
                api_keys.c.name,
                api_keys.c.role,
                api_keys.c.prefix,
                api_keys.c.created_at,
                api_keys.c.revoked_at,
            ).order_by(api_keys.c.name)
        )
        return [KeyInfo(r.name, Role(r.role), r.prefix, r.created_at, r.revoked_at) for r in rows]


def revoke_key(db: Database, name: str, now: datetime) -> None:
    """Revoke at once: the next request with that key is refused."""
    with db.write() as conn:
        done = conn.execute(
            update(api_keys)
            .where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        if done.rowcount == 0:
            raise NotFound(f"no active key named {name!r}")


#: Run on the driver's cursor (`Statement`): every request without a
#: status read of its own checks its caller with one of these.
_ANY_KEY = Statement(select(select(api_keys.c.id).exists()))
_KEY_COLUMNS = ("name", "role", "key_hash", "revoked_at")
_BY_PREFIX = Statement(
    select(*[api_keys.c[c] for c in _KEY_COLUMNS]).where(api_keys.c.prefix == bindparam("prefix"))
)


def any_keys(conn: Connection) -> bool:
    return bool(_ANY_KEY.run(conn, {})[0][0])


def _prefix(secret: str) -> str | None:
    parts = secret.split("_", 2)
    return parts[1] if len(parts) == 3 and parts[0] == "vl" else None


def _principal(secret: str, key: Sequence[Any] | None) -> Principal | None:
    """The principal of `secret`, given the row of its prefix (`_KEY_COLUMNS`)."""
    if key is None:
        return None
    name, role, key_hash, revoked_at = key
    if revoked_at is not None or not secrets.compare_digest(key_hash, _hash(secret)):
        return None
    return Principal(name=name, role=Role(role))


def verify_on(conn: Connection, secret: str) -> Principal | None:
    """The principal a secret belongs to, or None for an unknown or revoked key."""
    prefix = _prefix(secret)
    if prefix is None:
        return None
    found = _BY_PREFIX.run(conn, {"prefix": prefix})
    return _principal(secret, found[0] if found else None)


def verify(db: Database, secret: str) -> Principal | None:
    with db.read() as conn:
        return verify_on(conn, secret)


def has_any_key(db: Database) -> bool:
    with db.read() as conn:
        return any_keys(conn)


ANONYMOUS = Principal(name="anonymous", role=Role.ADMIN)


@dataclass
class Gate:
    """Decides who a caller is. Open mode only on loopback with no key at all.

    Each check reads the database (a revoked key is refused on the next
    request), on a connection the caller's own read can then go on using.
    """

    db: Database
    loopback: bool
    _keys_exist: bool = False

    def keys_exist(self) -> bool:
        if not self._keys_exist:
            self._keys_exist = has_any_key(self.db)
        return self._keys_exist

    def identify(self, secret: str | None) -> Principal:
        """Raises `Unauthorized` for a missing, unknown or revoked key."""
        with self.db.read() as conn:
            return self.identify_on(conn, secret)

    def identify_on(self, conn: Connection, secret: str | None) -> Principal:
        """`identify`, on a connection the caller holds (autocommit reads)."""
        if secret is None:
            return self.anonymous(lambda: any_keys(conn))
        return self.known(verify_on(conn, secret))

    def anonymous(self, any_key: Callable[[], bool]) -> Principal:
        """A caller without a key: let in only in open mode."""
        # Keys are never deleted (revoked ones stay), so once one exists open
        # mode is over for good. Until then, ask every time: the first key
        # closes open mode at once, even in a server that is already running,
        # whichever process created it.
        if self.may_be_open():
            self._keys_exist = any_key()
            if not self._keys_exist:
                return ANONYMOUS
        raise Unauthorized("an API key is required: send Authorization: Bearer <key>")

    def may_be_open(self) -> bool:
        """Whether open mode may still hold: on loopback, with no key seen yet
        (a caller without a key must then ask whether one exists now)."""
        return self.loopback and not self._keys_exist

    def known(self, principal: Principal | None) -> Principal:
        """A caller with a key, given what the key turned out to be."""
        if principal is None:
            raise Unauthorized("unknown or revoked API key")
        return principal


@dataclass(frozen=True)
class Access:
    """A caller's credentials and the permission a route asks of them, not yet
    checked: a read or a command checks them on its own connection, in its
    own thread, so an authorized request costs one connection and one trip
    to the threadpool."""

    gate: Gate
    secret: str | None
    permission: str

    def check(self, conn: Connection) -> Principal:
        """The caller; raises `Unauthorized` or `Forbidden`."""
        principal = self.gate.identify_on(conn, self.secret)
        principal.require(self.permission)
        return principal

    def admitted(self) -> tuple[Select[Any], dict[str, Any]] | None:
        """How a write that is one statement lets this caller in (see
        `ADMITTED`): the source of the caller's name, which gives no row
        unless the caller may act, and its parameters. None where only
        `check` can tell (a malformed key, or open mode known to be over):
        such a caller takes the checked way, which names the refusal."""
        if self.secret is None:
            if self.gate.may_be_open():
                return ADMITTED["open"], {}
            return None
        prefix = _prefix(self.secret)
        if prefix is None:
            return None
        roles = [role.value for role, grants in GRANTS.items() if self.permission in grants]
        return ADMITTED["key"], {
            "caller_prefix": prefix,
            "caller_hash": _hash(self.secret),
            "caller_roles": roles,
        }


def _admitted_sources() -> dict[str, Select[Any]]:
    """The callers a one-statement write admits, each a SELECT of one column,
    `actor`, with one row for a caller who may act and none otherwise:

    - `key`: the key of that prefix and hash, not revoked, of a role that
      grants the permission (the roles are a parameter: `GRANTS` stays the
      one rule). The hash is compared in SQL, not in constant time: what
      leaks is the stored hash, from which no secret can be made;
    - `open`: 'anonymous' while no key exists (open mode, on loopback);
    - `named`: a trusted caller's name, as given (the service's own callers).
    """
    c = api_keys.c
    by_key = select(c.name.label("actor")).where(
        c.prefix == bindparam("caller_prefix", type_=String),
        c.key_hash == bindparam("caller_hash", type_=String),
        c.revoked_at.is_(None),
        c.role == any_(bindparam("caller_roles", type_=ARRAY(Text))),
    )
    anonymous = literal_column(f"'{ANONYMOUS.name}'", String)
    open_mode = select(anonymous.label("actor")).where(~exists(select(c.id)))
    named = select(bindparam("caller_actor", type_=String).label("actor"))
    return {"key": by_key, "open": open_mode, "named": named}


#: See `_admitted_sources`; built once, so that statements made of them are
#: cached by them.
ADMITTED = _admitted_sources()


@dataclass(frozen=True)
class CheckedRead:
    """A read of at most one row that also fetches what checking its caller
    needs, so that an authorized read is one statement and one round trip.

    Built once per read statement, and run on the driver's cursor
    (`Statement`): for the hottest read, SQLAlchemy's execution
    machinery cost more than the query. The read's first column must be
    NOT NULL: a NULL there means the read found no row.
    """

    plain: Statement
    #: The read, joined to the row of the caller's key prefix.
    by_key: Statement
    #: The read, with whether any key exists (open mode on loopback).
    open_mode: Statement

    @classmethod
    def of(cls, read: Select[Any], *, lock: tuple[Table, ...] = ()) -> CheckedRead:
        """With `lock`, the tables of `read` that a rebuild may swap: the three
        statements are then prepared (see `Statement`)."""
        found = read.subquery("read")
        # One row always: the key's (or NULLs), and the read's (or NULLs).
        one = select(literal_column("1").label("one")).subquery("one")
        by_key = select(*[api_keys.c[c] for c in _KEY_COLUMNS], *found.c).select_from(
            one.outerjoin(api_keys, api_keys.c.prefix == bindparam("key_prefix")).outerjoin(
                found, true()
            )
        )
        any_key = select(api_keys.c.id).exists().label("any_key")
        open_mode = select(any_key, *found.c).select_from(one.outerjoin(found, true()))
        prepare = bool(lock)
        return cls(
            Statement(read, prepare=prepare, lock=lock),
            Statement(by_key, prepare=prepare, lock=lock),
            Statement(open_mode, prepare=prepare, lock=lock),
        )

    def run(
        self, conn: Connection, access: Access | None, params: dict[str, Any]
    ) -> Sequence[Any] | None:
        """The read's row, or None; raises `Unauthorized` or `Forbidden` first
        when `access` is given and not satisfied."""
        if access is None:
            return _first(self.plain.run(conn, params))
        gate, secret = access.gate, access.secret
        got: Sequence[Any] | None = None
        if secret is None:

            def any_key() -> bool:
                nonlocal got
                got = self.open_mode.run(conn, params)[0]
                return bool(got[0])

            principal = gate.anonymous(any_key)
            skip = 1
        else:
            prefix = _prefix(secret)
            if prefix is not None:
                got = self.by_key.run(conn, {**params, "key_prefix": prefix})[0]
            skip = len(_KEY_COLUMNS)
            key = got[:skip] if got is not None and got[0] is not None else None
            principal = gate.known(_principal(secret, key))
        principal.require(access.permission)
        if got is None:  # open mode already known, or a malformed key (refused above)
            return _first(self.plain.run(conn, params))
        row = got[skip:]
        return row if row[0] is not None else None


def _first(rows: Sequence[Sequence[Any]]) -> Sequence[Any] | None:
    return rows[0] if rows else None
