"""Alembic environment: runs migrations on the engine handed over by exchange.db.upgrade()."""

from alembic import context

from exchange.db import make_engine, metadata

config = context.config
engine = config.attributes.get("engine") or make_engine(config.get_main_option("sqlalchemy.url"))

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
