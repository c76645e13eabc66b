"""The single exception type raised by :mod:`vicinal.experiments.data`."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A dataset could not be found, read, verified or validated.

    The message always says which file or location was involved and what
    was expected, so that it can be shown to a user as is.  It subclasses
    :class:`ValueError` so that generic ``except ValueError`` handlers
    still catch it.
    """
