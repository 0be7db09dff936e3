"""The support-set tables (schema version 2), as SQLAlchemy Core metadata for SQLite and PostgreSQL.

A set is a list of ITEMS (one per support image: label, file name, and optionally the image
itself); EMBEDDINGS are kept per item and per model, so one set serves several models at once
(e.g. old and new replicas during a rolling update) and a model change adds rows instead of
invalidating the set. Images, when the server keeps them (``CLCE_KEEP_SUPPORT_IMAGES``), are stored
once per content (sha256), shared by every item that uploaded the same bytes::

    schema_version(version)                                   one row: the schema's version
    support_sets(id PK, name, model_sha256, embedding_dim,    the model that created the set and
                 created, updated)                            its embedding size
    support_items(id PK, set_id -> support_sets ON DELETE CASCADE, label, filename,
                  image_sha256 NULL -> support_images, created)
    support_embeddings(item_id -> support_items ON DELETE CASCADE, model_sha256,
                       embedding (D little-endian float32), PK (item_id, model_sha256))
    support_images(sha256 PK, data, created)

Times are ISO 8601 strings in UTC (millisecond precision), as in schema version 1.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

SCHEMA_VERSION = 2

metadata = MetaData()

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

support_sets = Table(
    "support_sets",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("model_sha256", String(64), nullable=False),
    Column("embedding_dim", Integer, nullable=False),
    Column("created", String(40), nullable=False),
    Column("updated", String(40), nullable=False),
)

support_images = Table(
    "support_images",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("created", String(40), nullable=False),
)

support_items = Table(
    "support_items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("set_id", String(64), ForeignKey("support_sets.id", ondelete="CASCADE"), nullable=False),
    Column("label", Text, nullable=False),
    Column("filename", Text, nullable=False),
    Column("image_sha256", String(64), ForeignKey("support_images.sha256"), nullable=True),
    Column("created", String(40), nullable=False),
    Index("support_items_by_set", "set_id", "id"),
    Index("support_items_by_image", "image_sha256"),
    sqlite_autoincrement=True,  # ids never reused: item order is insertion order
)

support_embeddings = Table(
    "support_embeddings",
    metadata,
    Column(
        "item_id",
        Integer,
        ForeignKey("support_items.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("model_sha256", String(64), primary_key=True),
    Column("embedding", LargeBinary, nullable=False),
)
