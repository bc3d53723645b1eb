"""The library's warnings as a user reads them: on global rank zero, without a file and line.

A warning from inside a callback hook would point at a line of this library, which the user
cannot act on; :func:`warn` issues it as coming from ``vitrcam`` instead, and the formatter
prints it as ``vitrcam: PossibleShortcutWarning: ...`` (other warnings keep their format; the
name carries no "lightning", which Lightning's own formatter would claim). Filters by category
keep working.

Example:
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn("something to know", UserWarning)
    >>> caught[0].filename, str(caught[0].message)
    ('vitrcam', 'something to know')
    >>> warnings.formatwarning("hello", UserWarning, ORIGIN, 0)
    'vitrcam: UserWarning: hello\\n'
"""

from __future__ import annotations

import warnings
from typing import Any

from lightning_utilities.core.rank_zero import rank_zero_only

__all__ = ["ORIGIN", "warn"]

#: where the library's warnings say they come from
ORIGIN = "vitrcam"
_previous_format = warnings.formatwarning


def _format(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: Any = None
) -> str:
    if filename == ORIGIN:
        return f"{ORIGIN}: {category.__name__}: {message}\n"
    return _previous_format(message, category, filename, lineno, line)


warnings.formatwarning = _format


@rank_zero_only
def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """Issue ``message`` on global rank zero, as coming from ``vitrcam``."""
    warnings.warn_explicit(message, category, ORIGIN, 0, module="lightning_vitrcam")
