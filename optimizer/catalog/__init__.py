"""The cloud catalogue: VM prices, region locations and measured inter-region RTT.

Data with a contract (see ``README.md`` beside the files): one CSV per concern, units in the
column names, a source and date on every fact. One module per cloud (``aws_catalog``,
``gcp_catalog``, ``azure_catalog``) exposes the same functions; the functions here dispatch on the
cloud name, as SkyPilot's ``sky/catalog`` does.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from fedcloud.core.errors import CatalogError
from optimizer.catalog.common import (
    CATALOG_DIR,
    CLOUDS,
    Catalog,
    PricedVm,
    Region,
    VmRow,
    did_you_mean,
    load_catalog,
)

__all__ = [
    "CATALOG_DIR",
    "CLOUDS",
    "Catalog",
    "PricedVm",
    "Region",
    "VmRow",
    "cloud_module",
    "get_default_instance_type",
    "get_hourly_cost",
    "get_vcpus_mem_from_instance_type",
    "instance_types",
    "load_catalog",
    "regions",
    "validate_cloud",
    "validate_instance_type",
    "validate_region",
]


def validate_cloud(cloud: str) -> str:
    """Return ``cloud`` if it is one of :data:`CLOUDS`, else raise with a did-you-mean."""
    if cloud in CLOUDS:
        return cloud
    hint = did_you_mean(cloud, CLOUDS) or f"use one of: {', '.join(CLOUDS)}."
    raise CatalogError(f"unknown cloud '{cloud}'.", hint)


def cloud_module(cloud: str) -> ModuleType:
    """Return the catalogue module of ``cloud`` (``optimizer.catalog.<cloud>_catalog``)."""
    return importlib.import_module(f"optimizer.catalog.{validate_cloud(cloud)}_catalog")


def regions(cloud: str) -> list[str]:
    """Return the priced regions of ``cloud``."""
    return list(cloud_module(cloud).regions())


def instance_types(cloud: str, region: str | None = None) -> list[str]:
    """Return the priced instance types of ``cloud`` (in ``region`` when given)."""
    return list(cloud_module(cloud).instance_types(region))


def validate_region(cloud: str, region: str) -> str:
    """Return ``region`` if ``cloud`` has it, else raise :class:`CatalogError`."""
    return str(cloud_module(cloud).validate_region(region))


def validate_instance_type(cloud: str, instance_type: str, region: str | None = None) -> str:
    """Return ``instance_type`` if priced (in ``region`` when given), else raise."""
    return str(cloud_module(cloud).validate_instance_type(instance_type, region))


def get_hourly_cost(cloud: str, instance_type: str, region: str) -> float:
    """Return the on-demand Linux price in USD per hour."""
    return float(cloud_module(cloud).get_hourly_cost(instance_type, region))


def get_vcpus_mem_from_instance_type(cloud: str, instance_type: str) -> tuple[int, float]:
    """Return (vCPUs, memory GiB) of an instance type."""
    vcpus, mem = cloud_module(cloud).get_vcpus_mem_from_instance_type(instance_type)
    return int(vcpus), float(mem)


def get_default_instance_type(cloud: str, region: str, min_vcpus: float,
                              min_memory_gib: float) -> str | None:
    """Return the cheapest default general-purpose size in ``region`` meeting the minimum."""
    result = cloud_module(cloud).get_default_instance_type(region, min_vcpus, min_memory_gib)
    return None if result is None else str(result)
