"""The registry: the catalogue of departments, certificate types, data sources and grants,
consent issuers and delegations.

`RegistryStore` validates and stores changes and hands the hub cached `RegistrySnapshot`s;
`RegistryServicer` (exchange.registry.service) serves it to administrators over gRPC.
"""

from exchange.registry.model import (
    CertificateType,
    ConsentIssuer,
    DataSource,
    Delegation,
    Department,
    FieldSpec,
    Grant,
    Quota,
    Record,
    SigningKey,
    to_json,
)
from exchange.registry.snapshot import RegistrySnapshot
from exchange.registry.store import RegistryStore

__all__ = [
    "CertificateType",
    "ConsentIssuer",
    "DataSource",
    "Delegation",
    "Department",
    "FieldSpec",
    "Grant",
    "Quota",
    "Record",
    "RegistrySnapshot",
    "RegistryStore",
    "SigningKey",
    "to_json",
]
