"""Per-cloud price refresh scripts (``python -m optimizer.refresh.<cloud>``).

Each rebuilds its cloud's ``optimizer/catalog/vms_<cloud>.csv`` from the provider's public price
data, and writes nothing unless the result is complete and valid (see :mod:`.common`).
"""
