"""The aggregator VM in the chosen public cloud (a module per cloud), firewall and bootstrap.

``infra/aws.py``, ``infra/gcp.py`` and ``infra/azure.py`` each define ``AggregatorVm(name, args,
opts=None)`` with the same outputs; :func:`aggregator_class` imports only the chosen cloud's
module, so only that cloud's SDK is loaded (``pulumi_azure_native`` alone costs seconds and
hundreds of MB). Nothing heavy is imported here: ``infra.auth`` shares this package.
"""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING

from fedcloud.core.errors import ConfigError

if TYPE_CHECKING:
    from infra.component import AggregatorVmBase

CLOUDS = ("aws", "gcp", "azure")


def aggregator_class(cloud: str) -> type[AggregatorVmBase]:
    """Return ``infra.<cloud>.AggregatorVm``, importing that cloud's module (and SDK) only.

    Raises:
        ConfigError: ``cloud`` is not one of :data:`CLOUDS`.
    """
    if cloud not in CLOUDS:
        close = difflib.get_close_matches(cloud, CLOUDS, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(CLOUDS)}."
        raise ConfigError(f"unknown cloud '{cloud}' for the aggregator.", hint)
    module = importlib.import_module(f"infra.{cloud}")
    cls: type[AggregatorVmBase] = module.AggregatorVm
    return cls
