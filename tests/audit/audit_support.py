"""Shared by the audit tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import dataclasses

from dbprobe.pg import PostgresServer
from dbprobe.urls import DatabaseTarget

WORKLOAD_ROUNDS = 5


@dataclasses.dataclass(frozen=True)
class AuditedShop:
    server: PostgresServer
    database: str

    @property
    def target(self) -> DatabaseTarget:
        return self.server.target(self.database)

    @property
    def has_hypopg(self) -> bool:
        rows = self.server.execute(
            "SELECT 1 FROM pg_extension WHERE extname = 'hypopg'", self.database
        )
        return bool(rows)
