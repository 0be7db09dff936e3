"""Support sets, persisted in SQLite (embedded default) or PostgreSQL (shared by replicas).

store = SupportSetStore("sqlite:///support_sets.sqlite3")   # or "postgresql://user:pw@host/db"
"""

from serving.store.errors import StoreError, StoreUnavailable
from serving.store.records import KeptImage, NewImages, SetEmbeddings, SupportSetInfo
from serving.store.schema import SCHEMA_VERSION
from serving.store.store import SupportSetStore

__all__ = [
    "SCHEMA_VERSION",
    "KeptImage",
    "NewImages",
    "SetEmbeddings",
    "StoreError",
    "StoreUnavailable",
    "SupportSetInfo",
    "SupportSetStore",
]
