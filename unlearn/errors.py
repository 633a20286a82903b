"""User-facing errors.

Every mistake a user can make (a misspelt name, a bad number, an unwritable folder) raises
:class:`BasinError` with one sentence that names the problem and the fix. The CLI prints that
sentence and exits with status 2, without a traceback.
"""


class BasinError(ValueError):
    """A problem with the user's input; the message says what is wrong and how to fix it."""


class LossDiverged(BasinError):
    """Unlearning stopped because the loss became non-finite (the learning rate is too high)."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`BasinError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise BasinError(message)
