"""The queue's schema: the versioned migrations of `sql/<dialect>/migration_000N_*.sql`, applied once each."""

from __future__ import annotations

from loguru import logger

from source.queue.base import QueueBase, Transaction


class SchemaMixin(QueueBase):
    def migrate(self, *, target_version: int | None = None) -> int:
        """Applies the missing migrations (all, or up to `target_version`) and returns the schema version."""
        wanted = self._migrations if target_version is None else self._migrations[:target_version]

        def apply(tx: Transaction) -> int:
            tx.run("lock_for_migration")
            tx.run("create_schema_version")
            applied = {int(row["version"]) for row in tx.all("applied_versions")}
            for migration in wanted:
                if migration.version in applied:
                    continue
                for statement in migration.statements:
                    if self._migration_statement_applies(tx, statement.sql):
                        tx.execute_script_statement(statement.sql)
                tx.run("record_migration", version=migration.version, title=migration.title)
                applied.add(migration.version)
                logger.info("queue schema migrated to version {} ({})", migration.version, migration.title)
            version = max(applied, default=0)
            if version > self.latest_version:
                logger.warning(
                    "the database schema is version {}, newer than this code knows ({}); upgrade this worker",
                    version,
                    self.latest_version,
                )
            return version

        return self._write(apply)

    @property
    def latest_version(self) -> int:
        return len(self._migrations)

    def schema_version(self) -> int:
        """The applied schema version, 0 for none; reads only (read-only commands check it instead of migrating)."""

        def read(tx: Transaction) -> int:
            if tx.one("schema_version_exists") is None:
                return 0
            return max((int(row["version"]) for row in tx.all("applied_versions")), default=0)

        return self._read(read)
