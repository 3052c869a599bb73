"""Aggregator Deployment Optimizer: catalogue of clouds -> NSGA-II -> one (cloud, region, VM)."""
