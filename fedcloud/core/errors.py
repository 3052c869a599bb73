"""Domain exceptions: every user-facing failure says what failed, why, and the exact fix.

The CLI prints ``str(error)`` on one line and exits non-zero; a traceback is shown only with
``--debug``. Raise these with ``from None`` when the message already says everything.
"""

from __future__ import annotations


class FedcloudError(Exception):
    """Base of every error the user can act on.

    Args:
        message: What failed and why.
        fix: The exact action that fixes it (a command, a key to set); appended as "To fix: ...".
    """

    exit_code = 2

    def __init__(self, message: str, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(f"{message} To fix: {fix}" if fix else message)


class ConfigError(FedcloudError):
    """A stack file or config value is missing, malformed or out of range."""


class CatalogError(FedcloudError):
    """A catalogue file is malformed (names the file, the row and the problem)."""


class PlanError(FedcloudError):
    """The optimizer cannot satisfy the request (names the binding limit, proposes options)."""


class OrchestratorError(FedcloudError):
    """Dispatching a participant's task to its VMs failed."""


class TrainingError(FedcloudError):
    """A Flower process or run failed."""


class RegistryError(FedcloudError):
    """The model registry cannot record, find or load a model."""


class AuthError(FedcloudError):
    """A cloud credential could not be read or was rejected by the cloud."""
