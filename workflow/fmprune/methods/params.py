"""Checks of ``method_params`` values, declared by each method module as ``PARAMS``.

``PARAMS`` maps every keyword a method accepts to a check that raises ValueError with a short
reason; :func:`fmprune.methods.check_params` runs them when the config is validated, so a value
the scorer would reject fails before any job runs, naming its key.
"""
from __future__ import annotations

import math

from .. import FmpruneError


class ParamError(FmpruneError):
    """A config entry a method refuses; ``where`` is its key, e.g. ``method_params.cfdp.block``
    (a bad parameter) or ``features.dtype`` (a module's ``check_setting``)."""

    def __init__(self, where: str, why: str):
        super().__init__(f"{where}: {why}")
        self.where, self.why = where, why


def integer(minimum: int):
    def check(value) -> None:
        if type(value) is not int or value < minimum:
            raise ValueError(f"must be an integer >= {minimum}, got {value!r}")

    return check


def number(minimum: float | None = None, maximum: float | None = None):
    def check(value) -> None:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value!r}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = f"[{minimum if minimum is not None else '-inf'}, {maximum if maximum is not None else 'inf'}]"
            raise ValueError(f"must lie in {bounds}, got {value!r}")

    return check


def one_of(*choices: str):
    def check(value) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {value!r}")

    return check
