"""One consistent, immutable view of the whole catalogue, indexed for the hub's look-ups.

A snapshot is built once per registry version and then shared by every call until the
version changes, so each look-up on the lookup path is a dict access.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from exchange.registry.model import (
    CertificateType,
    ConsentIssuer,
    DataSource,
    Delegation,
    Department,
    Grant,
    SigningKey,
)


class RegistrySnapshot:
    """The catalogue at one registry version. Treat it as read-only."""

    def __init__(
        self,
        version: int,
        departments: Iterable[Department],
        certificate_types: Iterable[CertificateType],
        data_sources: Iterable[DataSource],
        grants: Iterable[Grant],
        consent_issuers: Iterable[ConsentIssuer] = (),
        delegations: Iterable[Delegation] = (),
    ) -> None:
        self.version = version
        self.departments = tuple(departments)
        self.certificate_types = tuple(certificate_types)
        self.data_sources = tuple(data_sources)
        self.grants = tuple(grants)
        self.consent_issuers = tuple(consent_issuers)
        self.delegations = tuple(delegations)
        self._consent_issuers = {i.id: i for i in self.consent_issuers}
        self._consent_keys = {
            (i.id, key.key_id): key for i in self.consent_issuers for key in i.signing_keys
        }
        self._delegations = {d.id: d for d in self.delegations}
        self._departments = {d.code: d for d in self.departments}
        self._certificate_types = {t.code: t for t in self.certificate_types}
        self._signing_keys = {
            (d.code, key.key_id): key for d in self.departments for key in d.signing_keys
        }
        grants_by: defaultdict[tuple[str, str], list[Grant]] = defaultdict(list)
        for grant in self.grants:
            grants_by[grant.requesting_department, grant.certificate_type].append(grant)
        self._grants = {key: tuple(found) for key, found in grants_by.items()}
        sources_by: defaultdict[str, list[DataSource]] = defaultdict(list)
        for source in self.data_sources:
            if source.enabled:
                for code in source.certificate_types:
                    sources_by[code].append(source)
        self._data_sources = {key: tuple(found) for key, found in sources_by.items()}

    def department(self, code: str) -> Department | None:
        """The registered department with this code, if any."""
        return self._departments.get(code)

    def certificate_type(self, code: str) -> CertificateType | None:
        """The registered certificate type with this code, if any."""
        return self._certificate_types.get(code)

    def grants_for(self, requesting_department: str, certificate_type: str) -> list[Grant]:
        """Every grant (in force or not) of `certificate_type` to `requesting_department`."""
        return list(self._grants.get((requesting_department, certificate_type), ()))

    def data_sources_for(self, certificate_type: str) -> list[DataSource]:
        """The enabled data sources serving `certificate_type`, by id."""
        return list(self._data_sources.get(certificate_type, ()))

    def signing_key(self, department: str, key_id: str) -> SigningKey | None:
        """The key `key_id` if `department` registered it (in its window or not)."""
        return self._signing_keys.get((department, key_id))

    def consent_issuer(self, id: str) -> ConsentIssuer | None:
        """The registered consent issuer with this id, if any."""
        return self._consent_issuers.get(id)

    def consent_key(self, issuer: str, key_id: str) -> SigningKey | None:
        """The key `key_id` if consent issuer `issuer` registered it (in its window or not)."""
        return self._consent_keys.get((issuer, key_id))

    def delegation(self, id: str) -> Delegation | None:
        """The delegation with this id (revoked or not), if any."""
        return self._delegations.get(id)
