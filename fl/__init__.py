"""Federated learning: the Flower app, SSH orchestration of private VMs, the model registry."""
