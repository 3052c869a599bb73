"""The Flower app's own exception: it ships in the FAB, so it cannot use the project's errors.

:class:`AppError` reads like the project's user errors (``"<what failed>. To fix: <fix>"``) and
keeps both parts, so the operator's side can re-raise it as one of its own classes when an app
function (building a model, loading data, writing a round) runs there.
"""

from __future__ import annotations


class AppError(RuntimeError):
    """A model, data or round-store failure inside the Flower app.

    Args:
        message: What failed and why.
        fix: The exact action that fixes it; appended as "To fix: ...".
    """

    def __init__(self, message: str, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(f"{message} To fix: {fix}" if fix else message)
