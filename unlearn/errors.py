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


def require_number(name: str, value, low=None, high=None, low_open: bool = False, high_open: bool = False,
                   integer: bool = False) -> None:
    """Raise :class:`BasinError` unless ``value`` is a number (an integer with ``integer``; never a
    bool) within the bounds: ``low`` / ``high`` inclusive unless ``low_open`` / ``high_open``.

    >>> require_number("beta", 0, 0, low_open=True)
    Traceback (most recent call last):
    ...
    unlearn.errors.BasinError: beta must be a number > 0, got 0
    """
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = ok and not isinstance(value, bool) and value == value  # NaN is no number to train with
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        bounds = " and ".join(b for b in (lo, hi) if b)
        raise BasinError(f"{name} must be {kind}{' ' + bounds if bounds else ''}, got {value!r}")
