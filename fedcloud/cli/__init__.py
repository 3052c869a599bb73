"""The ``fedcloud`` command line (``fedcloud.cli.main``), one module per subcommand."""

from fedcloud.cli.main import main

__all__ = ["main"]
