"""Azure catalogue: look-ups over ``vms_azure.csv`` (same function names in every cloud module).

Region codes (ARM names) look like ``koreacentral``; VM sizes like ``Standard_D2s_v5``.
"""

from __future__ import annotations

import re

from optimizer.catalog import common

CLOUD = "azure"
PRICE_FILE = common.vm_file(CLOUD)
REGION_PATTERN = re.compile(r"[a-z]+[a-z0-9]*")
INSTANCE_TYPE_PATTERN = re.compile(r"Standard_[A-Za-z0-9_]+")
# The operator's "default general-purpose size" family, cheapest first among those meeting a
# minimum (SkyPilot's defaults for this cloud).
DEFAULT_FAMILIES: tuple[str, ...] = ("Standard_D",)


def regions() -> list[str]:
    """Return the priced regions, sorted."""
    return common.load_catalog().priced_regions(CLOUD)


def instance_types(region: str | None = None) -> list[str]:
    """Return the priced instance types (in ``region`` when given), sorted."""
    rows = common.load_catalog().vms_of(CLOUD)
    return sorted({v.instance_type for v in rows if region is None or v.region == region})


def validate_region(region: str) -> str:
    """Return ``region`` if known, else raise :class:`CatalogError` with a did-you-mean."""
    return common.validate_region_impl(common.load_catalog(), CLOUD, region)


def validate_instance_type(instance_type: str, region: str | None = None) -> str:
    """Return ``instance_type`` if priced (in ``region`` when given), else raise."""
    return common.validate_instance_type_impl(common.load_catalog(), CLOUD, instance_type, region)


def get_hourly_cost(instance_type: str, region: str) -> float:
    """Return the on-demand Linux price in USD per hour."""
    return common.get_hourly_cost_impl(common.load_catalog(), CLOUD, instance_type, region)


def get_vcpus_mem_from_instance_type(instance_type: str) -> tuple[int, float]:
    """Return (vCPUs, memory in GiB)."""
    return common.get_vcpus_mem_impl(common.load_catalog(), CLOUD, instance_type)


def get_default_instance_type(region: str, min_vcpus: float, min_memory_gib: float) -> str | None:
    """Return the cheapest default-family type in ``region`` meeting the minimum, if any."""
    return common.get_default_instance_type_impl(common.load_catalog(), CLOUD, region, min_vcpus,
                                                  min_memory_gib, DEFAULT_FAMILIES)
