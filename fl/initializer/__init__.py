"""FL Initializer: certificates, the SuperLink, the flwr CLI, the app bundle and the training run."""
