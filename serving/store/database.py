"""The database behind the store: URL, engine, and the two kinds of transaction every operation uses.

``CLCE_DB_URL`` is an SQLAlchemy URL:

- ``sqlite:///relative/path.sqlite3`` or ``sqlite:////absolute/path.sqlite3`` (``~`` is expanded;
  the folder is created): the embedded default, one file, WAL journal;
- ``postgresql://user:password@host:5432/dbname`` (``postgres://`` too): run with the ``psycopg``
  (v3) driver, whatever driver the URL names.

Transactions (every store operation is exactly one):

- :meth:`Database.read` sees ONE consistent snapshot for all its statements. SQLite: ``BEGIN``
  in WAL mode (the snapshot is taken at the first read and held to the end); PostgreSQL:
  ``REPEATABLE READ READ ONLY``, which never fails with a serialisation error.
- :meth:`Database.write`: SQLite ``BEGIN IMMEDIATE`` (writers queue for the file's write lock, so a
  write never sees a set change under it); PostgreSQL ``READ COMMITTED`` in which a write locks the
  rows it depends on first (``SELECT ... FOR UPDATE`` on the set, an advisory lock around image
  garbage collection), so concurrent writers wait for each other instead of failing.

A database error inside either becomes :class:`~serving.store.errors.StoreUnavailable` (503).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event, exc, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url

from serving.store.errors import StoreError, StoreUnavailable

logger = logging.getLogger(__name__)

_SQLITE_BEGIN = "clce_sqlite_begin"  # execution option: DEFERRED (read) or IMMEDIATE (write)
#: pg_advisory_xact_lock keys (any two fixed 64-bit numbers)
MIGRATION_LOCK = 0x434C4345_0001
IMAGES_LOCK = 0x434C4345_0002


def parse_url(url: str) -> URL:
    """The SQLAlchemy URL for ``url``, with PostgreSQL on psycopg and SQLite's ``~`` expanded.

    Raises:
        StoreError: not a ``sqlite:`` or ``postgresql:`` URL.
    """
    try:
        parsed = make_url(url)
    except exc.ArgumentError:
        raise StoreError(
            f"CLCE_DB_URL {url!r} is not a database URL; use sqlite:///path/to/file.sqlite3 or "
            "postgresql://user:password@host:5432/dbname"
        ) from None
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise StoreError(
                f"CLCE_DB_URL {url!r} names no file; support sets need one: sqlite:///path/to/file.sqlite3"
            )
        return parsed.set(drivername="sqlite", database=str(Path(parsed.database).expanduser()))
    raise StoreError(
        f"CLCE_DB_URL {parsed.render_as_string(hide_password=True)!r}: backend {backend!r} is not supported; "
        "use sqlite:///path/to/file.sqlite3 or postgresql://user:password@host:5432/dbname"
    )


def _sqlite_engine(url: URL) -> Engine:
    folder = Path(url.database or "").parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the folder {folder} for the support-set database: {e}") from None
    engine = create_engine(url, connect_args={"timeout": 30.0})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (pysqlite's is late)
        dbapi_connection.execute("PRAGMA foreign_keys = ON")
        dbapi_connection.execute("PRAGMA journal_mode = WAL")

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get(_SQLITE_BEGIN, 'DEFERRED')}")

    return engine


class Database:
    """An engine with the store's transactions.

    Args:
        url: ``sqlite:///...`` or ``postgresql://...`` (see the module doc).

    Raises:
        StoreError: a URL that is not one of those.
    """

    def __init__(self, url: str) -> None:
        self.url = parse_url(url)
        self.dialect = self.url.get_backend_name()
        self.engine = (
            _sqlite_engine(self.url)
            if self.dialect == "sqlite"
            else create_engine(self.url, pool_pre_ping=True, pool_size=8, max_overflow=8)
        )
        if self.dialect == "sqlite":
            self._read_options: dict[str, Any] = {_SQLITE_BEGIN: "DEFERRED"}
            self._write_options: dict[str, Any] = {_SQLITE_BEGIN: "IMMEDIATE"}
        else:
            self._read_options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
            self._write_options = {"isolation_level": "READ COMMITTED"}

    @property
    def display(self) -> str:
        """The URL with its password hidden, for logs and messages."""
        return self.url.render_as_string(hide_password=True)

    @contextmanager
    def _transaction(self, options: dict[str, Any]) -> Iterator[Connection]:
        try:
            with self.engine.connect().execution_options(**options) as conn, conn.begin():
                yield conn
        except (exc.DBAPIError, exc.TimeoutError) as e:  # TimeoutError: no pooled connection came free
            cause = e.orig if isinstance(e, exc.DBAPIError) else e
            lines = str(cause).strip().splitlines() or ["no message"]
            reason = f"{type(cause).__name__}: {lines[0]}"
            logger.error("support-set database %s failed: %s", self.display, reason)
            raise StoreUnavailable(
                f"the support-set database ({self.display}) failed: {reason}; retry shortly", reason=reason
            ) from None

    def read(self) -> AbstractContextManager[Connection]:
        """A read-only transaction with one consistent snapshot."""
        return self._transaction(self._read_options)

    def write(self) -> AbstractContextManager[Connection]:
        """A read-write transaction; see the module doc."""
        return self._transaction(self._write_options)

    def lock(self, conn: Connection, key: int) -> None:
        """Hold a PostgreSQL advisory lock until the transaction ends (SQLite writes are serial already)."""
        if self.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

    def insert_new(self, conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
        """Insert ``rows``, skipping those whose primary key exists (``ON CONFLICT DO NOTHING``)."""
        if rows:
            insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
            conn.execute(insert(table).on_conflict_do_nothing(), list(rows))

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
