"""Single-use consent tokens: the first lookup spends one, any later one is a replay.

Spending is one INSERT into `consent_uses`, keyed by (issuer, consent_id): the database's
primary key decides which of two concurrent uses wins, on one hub or across replicas sharing
the database, so no check-then-write race lets a token through twice. A token is spent by the
attempt that passes every other check, even if fetching the record then fails: an attacker
must not be able to probe with a stolen token until a lookup happens to succeed.

Rows are kept until their token expires (a replay after that is refused as expired anyway),
then purged, at most hourly, by a later spend.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import sqlalchemy as sa

from exchange.consent import Consent
from exchange.db import metadata
from exchange.errors import permission_denied
from exchange.registry.tables import CODE_LENGTH, UtcDateTime

PURGE_INTERVAL = dt.timedelta(hours=1)
# Rows outlive their token by a day, so hub replicas whose clocks disagree by less than that
# never forget a use that another replica would still accept the token for.
PURGE_MARGIN = dt.timedelta(days=1)

consent_uses = sa.Table(
    "consent_uses",
    metadata,
    sa.Column("issuer", sa.String(CODE_LENGTH), primary_key=True),
    sa.Column("consent_id", sa.String(CODE_LENGTH), primary_key=True),
    sa.Column("first_used_at", UtcDateTime, nullable=False),
    sa.Column("expires_at", UtcDateTime, nullable=False, index=True),
)


class ConsentUses:
    """The spent single-use consents, in the hub's database."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._last_purge: dt.datetime | None = None

    async def spend(self, consent: Consent, now: dt.datetime) -> None:
        """Record the use of a single-use consent; permission_denied if it was used before.

        Reusable consents are not recorded: they are good until they expire.
        """
        if consent.reusable:
            return
        await asyncio.to_thread(self._spend, consent, now)

    def _spend(self, consent: Consent, now: dt.datetime) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    consent_uses.insert().values(
                        issuer=consent.issuer,
                        consent_id=consent.consent_id,
                        first_used_at=now,
                        expires_at=consent.expires_at,
                    )
                )
        except sa.exc.IntegrityError:
            raise permission_denied("consent already used") from None
        if self._last_purge is None or now - self._last_purge >= PURGE_INTERVAL:
            self._last_purge = now
            self.purge(now)

    def purge(self, now: dt.datetime) -> int:
        """Forget uses of consents expired more than PURGE_MARGIN ago; how many were removed."""
        with self._engine.begin() as conn:
            result = conn.execute(
                consent_uses.delete().where(consent_uses.c.expires_at < now - PURGE_MARGIN)
            )
        return int(result.rowcount or 0)
