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
# SkyPilot's default general-purpose families for Azure.
DEFAULT_FAMILIES: tuple[str, ...] = ("Standard_D",)

_LOOKUPS = common.CloudLookups(CLOUD, DEFAULT_FAMILIES)
regions = _LOOKUPS.regions
instance_types = _LOOKUPS.instance_types
validate_region = _LOOKUPS.validate_region
validate_instance_type = _LOOKUPS.validate_instance_type
get_hourly_cost = _LOOKUPS.get_hourly_cost
get_vcpus_mem_from_instance_type = _LOOKUPS.get_vcpus_mem_from_instance_type
get_default_instance_type = _LOOKUPS.get_default_instance_type
