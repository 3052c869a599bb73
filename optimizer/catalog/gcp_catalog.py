"""GCP catalogue: look-ups over ``vms_gcp.csv`` (same function names in every cloud module).

Region codes look like ``europe-west1``; machine types like ``n2-standard-4`` (series-class-vCPUs).
"""

from __future__ import annotations

import re

from optimizer.catalog import common

CLOUD = "gcp"
PRICE_FILE = common.vm_file(CLOUD)
REGION_PATTERN = re.compile(r"[a-z]+(-[a-z]+)*[0-9]+")
INSTANCE_TYPE_PATTERN = re.compile(r"[a-z][a-z0-9]*(-[a-z]+)+-[0-9]+")
# SkyPilot's default general-purpose families for GCP.
DEFAULT_FAMILIES: tuple[str, ...] = ("n2-standard-",)

_LOOKUPS = common.CloudLookups(CLOUD, DEFAULT_FAMILIES)
regions = _LOOKUPS.regions
instance_types = _LOOKUPS.instance_types
validate_region = _LOOKUPS.validate_region
validate_instance_type = _LOOKUPS.validate_instance_type
get_hourly_cost = _LOOKUPS.get_hourly_cost
get_vcpus_mem_from_instance_type = _LOOKUPS.get_vcpus_mem_from_instance_type
get_default_instance_type = _LOOKUPS.get_default_instance_type
