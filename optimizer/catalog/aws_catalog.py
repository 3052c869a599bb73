"""AWS catalogue: look-ups over ``vms_aws.csv`` (same function names in every cloud module).

Region codes look like ``us-east-1``; instance types like ``m6i.large`` (family.size).
"""

from __future__ import annotations

import re

from optimizer.catalog import common

CLOUD = "aws"
PRICE_FILE = common.vm_file(CLOUD)
REGION_PATTERN = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]")
INSTANCE_TYPE_PATTERN = re.compile(r"[a-z][a-z0-9-]*\.[0-9]*[a-z]+")
# SkyPilot's default general-purpose families for AWS.
DEFAULT_FAMILIES: tuple[str, ...] = ("m6i.", "m5.")

_LOOKUPS = common.CloudLookups(CLOUD, DEFAULT_FAMILIES)
regions = _LOOKUPS.regions
instance_types = _LOOKUPS.instance_types
validate_region = _LOOKUPS.validate_region
validate_instance_type = _LOOKUPS.validate_instance_type
get_hourly_cost = _LOOKUPS.get_hourly_cost
get_vcpus_mem_from_instance_type = _LOOKUPS.get_vcpus_mem_from_instance_type
get_default_instance_type = _LOOKUPS.get_default_instance_type
