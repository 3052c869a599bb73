"""Model Manager: read the round store, recommend the best model, download, sync and plot."""
