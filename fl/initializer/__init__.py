"""FL Initializer: certificates, the SuperLink, the flwr CLI, the app bundle, the training run."""
