"""The registry: the catalogue of departments, certificate types, data sources and grants.

`RegistryStore` validates and stores changes and hands the hub cached `RegistrySnapshot`s;
`RegistryServicer` (exchange.registry.service) serves it to administrators over gRPC.
"""

from exchange.registry.model import (
    CertificateType,
    DataSource,
    Department,
    FieldSpec,
    Grant,
    Record,
    SigningKey,
    to_json,
)
from exchange.registry.snapshot import RegistrySnapshot
from exchange.registry.store import RegistryStore

__all__ = [
    "CertificateType",
    "DataSource",
    "Department",
    "FieldSpec",
    "Grant",
    "Record",
    "RegistrySnapshot",
    "RegistryStore",
    "SigningKey",
    "to_json",
]
