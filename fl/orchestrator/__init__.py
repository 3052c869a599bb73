"""Dynamic Task Orchestrator: filter VMs, round-robin from a circular queue, retry on the next VM."""
