"""fedcloud: cross-cloud federated learning as Infrastructure-as-Code.

The parts live in sibling packages (``optimizer``, ``infra``, ``fl``); this package holds what
they share: the stack configuration loader, the domain errors, the process environment and the
``fedcloud`` command line.
"""
