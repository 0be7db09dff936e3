"""Versioned schema migrations, run at start-up in ONE transaction.

The version is the row of ``schema_version``. A database without that table but with
``support_sets`` is version 1 (the SQLite schema before this module, marked by ``PRAGMA
user_version = 1``); an empty database is version 0 and gets the current tables at once. An older
database is upgraded step by step (:data:`STEPS`); a newer one is refused with both versions named.
Replicas starting together on one PostgreSQL database migrate once: the transaction holds an
advisory lock (SQLite: ``BEGIN IMMEDIATE`` holds the file's write lock).

SQLite files also carry the version in ``PRAGMA user_version``, so a server from before this
module refuses a newer file with its own message instead of misreading it.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, inspect, select, text

from serving.store.database import MIGRATION_LOCK, Database
from serving.store.errors import StoreError
from serving.store.schema import (
    SCHEMA_VERSION,
    metadata,
    schema_version,
    support_embeddings,
    support_images,
    support_items,
)


def current_version(conn: Connection) -> int:
    """The schema version of the database behind ``conn`` (0 when it holds no support-set tables)."""
    tables = set(inspect(conn).get_table_names())
    if "schema_version" in tables:
        return int(conn.execute(select(schema_version.c.version)).scalar_one())
    return 1 if "support_sets" in tables else 0


def _v1_to_v2(conn: Connection) -> None:
    """Embeddings per (image, model) and optional kept images; version 1's rows keep their ids and order."""
    support_images.create(conn)
    support_items.create(conn)
    conn.execute(
        text(
            "INSERT INTO support_items (id, set_id, label, filename, image_sha256, created) "
            "SELECT id, set_id, label, filename, NULL, created FROM support_embeddings"
        )
    )
    conn.execute(text("ALTER TABLE support_embeddings RENAME TO support_embeddings_v1"))
    support_embeddings.create(conn)
    conn.execute(
        text(
            "INSERT INTO support_embeddings (item_id, model_sha256, embedding) "
            "SELECT e.id, s.model_sha256, e.embedding FROM support_embeddings_v1 e "
            "JOIN support_sets s ON s.id = e.set_id"
        )
    )
    conn.execute(text("DROP TABLE support_embeddings_v1"))
    schema_version.create(conn)
    conn.execute(schema_version.insert().values(version=1))


#: ``STEPS[v]`` upgrades a database of version ``v`` to ``v + 1``.
STEPS: dict[int, Callable[[Connection], None]] = {1: _v1_to_v2}


def _set_version(db: Database, conn: Connection, version: int) -> None:
    conn.execute(schema_version.update().values(version=version))
    if db.dialect == "sqlite":
        conn.exec_driver_sql(f"PRAGMA user_version = {int(version)}")


def migrate(db: Database) -> int:
    """Bring the database to :data:`SCHEMA_VERSION`.

    Returns:
        The version found before upgrading (0: the database was empty).

    Raises:
        StoreError: the database was written by a newer server.
    """
    with db.write() as conn:
        db.lock(conn, MIGRATION_LOCK)
        found = current_version(conn)
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"the support-set database {db.display} has schema version {found}, newer than this "
                f"server's {SCHEMA_VERSION}: run a newer server, or point CLCE_DB_URL at another database"
            )
        if found == SCHEMA_VERSION:
            return found
        if found == 0:
            metadata.create_all(conn)
            conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))
        else:
            for version in range(found, SCHEMA_VERSION):
                STEPS[version](conn)
        _set_version(db, conn, SCHEMA_VERSION)
        return found
