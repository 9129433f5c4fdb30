"""Accounts of the labeling app: users, passwords, logins, the app's secret key, and a limit
on failed logins.

A user is a `Labeler` of kind human with a password and a role, so rankings made in the
browser and rankings imported from files meet in one agreement table. Passwords are hashed
with argon2id; a login is a random token in a cookie whose SHA-256 alone is stored.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections import defaultdict, deque
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.store import (
    Labeler,
    Setting,
    Store,
    User,
    WebSession,
    insert_statement,
)

ROLES = ("admin", "labeler")
MIN_PASSWORD = 8
SESSION_HOURS = 12
_hasher = PasswordHasher()


def now() -> datetime:
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """SQLite hands datetimes back without their zone; ours are all UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise RlhfkitError(f"a password needs at least {MIN_PASSWORD} characters")


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 200:
        raise RlhfkitError("a user name needs 1 to 200 characters")
    return name


def add_user(session: Session, name: str, role: str, password: str) -> User:
    """A new account; its labeler row is made, or reused when rankings were imported under
    that name before (a human labeler only: an AI labeler cannot log in)."""
    name = check_name(name)
    if role not in ROLES:
        raise RlhfkitError(f"role must be admin or labeler, not '{role}'")
    check_password(password)
    table = Labeler.__table__
    session.execute(
        insert_statement(session, table).on_conflict_do_nothing(),
        {"name": name, "kind": "human", "created_at": now()},
    )
    labeler = session.scalar(select(Labeler).where(Labeler.name == name))
    if labeler.kind != "human":
        raise RlhfkitError(f"'{name}' is an AI labeler in the store; pick another name")
    if session.scalar(select(User).where(User.labeler_id == labeler.id)) is not None:
        raise RlhfkitError(f"user '{name}' exists already")
    user = User(labeler_id=labeler.id, role=role, password_hash=_hasher.hash(password))
    session.add(user)
    session.flush()
    return user


def create_user(store: Store, name: str, role: str, password: str) -> None:
    with store.session() as session:
        add_user(session, name, role, password)


def set_password(session: Session, user: User, password: str) -> None:
    check_password(password)
    user.password_hash = _hasher.hash(password)
    session.execute(delete(WebSession).where(WebSession.user_id == user.id))


def find_user(session: Session, name: str) -> User | None:
    return session.scalar(select(User).join(Labeler).where(Labeler.name == name.strip()))


def authenticate(session: Session, name: str, password: str) -> User | None:
    """The active user with that name and password, else None. A missing user costs the
    same hashing time as a wrong password, so the answer's speed does not tell which."""
    user = find_user(session, name)
    if user is None:
        _hasher.hash(password)
        return None
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return user if user.active else None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(session: Session, user: User, hours: float = SESSION_HOURS) -> str:
    """A new login for `user`; returns the token for the cookie. Expired logins go."""
    session.execute(delete(WebSession).where(WebSession.expires_at < now()))
    token = secrets.token_urlsafe(32)
    session.add(
        WebSession(id=_digest(token), user_id=user.id, expires_at=now() + timedelta(hours=hours))
    )
    return token


def session_user(session: Session, token: str | None) -> tuple[User, str] | None:
    """(the user, the session's id) of a cookie's token, if the login has not expired and
    the account is active."""
    if not token:
        return None
    found = session.get(WebSession, _digest(token))
    if found is None or aware(found.expires_at) <= now():
        return None
    user = session.get(User, found.user_id)
    return (user, found.id) if user is not None and user.active else None


def end_session(session: Session, token: str | None) -> None:
    if token:
        session.execute(delete(WebSession).where(WebSession.id == _digest(token)))


def deactivate(session: Session, user: User, active: bool) -> None:
    user.active = active
    if not active:
        session.execute(delete(WebSession).where(WebSession.user_id == user.id))


def secret_key(store: Store) -> bytes:
    """RLHFKIT_SECRET_KEY, or a key made once and kept in the store, so every process
    serving the store signs alike and restarts keep forms valid."""
    given = os.environ.get("RLHFKIT_SECRET_KEY")
    if given:
        return given.encode()
    with store.session() as session:
        table = Setting.__table__
        session.execute(
            insert_statement(session, table).on_conflict_do_nothing(),
            {"key": "secret_key", "value": secrets.token_hex(32)},
        )
        return session.scalar(select(Setting.value).where(Setting.key == "secret_key")).encode()


class LoginLimiter:
    """At most `attempts` failed logins per account and per address in `window` seconds;
    then logins from there are refused until the oldest failure leaves the window."""

    def __init__(self, attempts: int = 5, window: float = 300.0):
        self.attempts, self.window = attempts, window
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: str, moment: float) -> deque[float]:
        failures = self._failures[key]
        while failures and failures[0] <= moment - self.window:
            failures.popleft()
        return failures

    def wait(self, *keys: str) -> float:
        """Seconds until a login for these keys may be tried again (0: now)."""
        moment = time.monotonic()
        with self._lock:
            waits = [
                f[0] + self.window - moment
                for f in (self._recent(k, moment) for k in keys)
                if len(f) >= self.attempts
            ]
        return max(waits, default=0.0)

    def failed(self, *keys: str) -> None:
        moment = time.monotonic()
        with self._lock:
            for key in keys:
                self._recent(key, moment).append(moment)
