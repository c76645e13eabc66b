"""The harness's run-level failures, which the command line reports in one line, and the
record a failed study cell leaves (``failed.json``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["FAILED", "CellFailed", "CellFailure", "CellsFailed", "RunFailed"]

#: The file a study cell that failed leaves in its folder, instead of ``result.json``.
FAILED = "failed.json"


class RunFailed(RuntimeError):
    """A run stopped for a reason outside its options (a dead rank or worker).

    The message is one line that says what happened and what to do; the command line
    prints it without a traceback. With ``exit_at_once`` the command line then leaves with
    ``os._exit``, skipping interpreter shutdown (see :class:`~vicinal.experiments.distributed.RankFailure`).
    """

    exit_at_once: bool = False


@dataclass(frozen=True)
class CellFailure:
    """What ``failed.json`` holds: why a study cell failed, and where and when.

    Attributes:
        error: the one-line message of the error.
        type: the error's class name (e.g. ``"NonFiniteLossError"``).
        host, pid, time: the process that trained the cell, and when it failed (Unix time).
    """

    error: str
    type: str
    host: str
    pid: int
    time: float


class CellFailed(ValueError):
    """A study cell failed on its own: its training diverged, a file of its folder is
    damaged. The cell's ``failed.json`` records it; the study goes on with its other
    cells (unless ``--fail-fast``), and the cell is retried when the study runs again.

    The message is the original error's, so that ``--fail-fast`` prints what it always did.

    Attributes:
        cell: ``"<arm> seed <k>"``.
    """

    def __init__(self, message: str, cell: str = "") -> None:
        super().__init__(message, cell)
        self.message = message
        self.cell = cell

    def __str__(self) -> str:
        return self.message


class CellsFailed(RunFailed):
    """The end of a study in which some cells failed (the others ran to the end).

    Attributes:
        failures: each failed cell's :class:`CellFailed`.
        finished: how many cells of the study's shard have a result.
    """

    #: How many failures the one-line message spells out.
    SHOWN = 3

    def __init__(self, failures: Sequence[CellFailed], finished: int, where: str) -> None:
        self.failures = list(failures)
        self.finished = finished
        shown = "; ".join(f"{f.cell}: {f.message}" for f in self.failures[: self.SHOWN])
        more = len(self.failures) - self.SHOWN
        super().__init__(
            f"{len(self.failures)} of {len(self.failures) + finished} cells failed and {finished} finished "
            f"(each failure is in its cell's {FAILED} under {where}, and in the report): {shown}"
            + (f"; and {more} more" if more > 0 else "")
            + ". Run the same command again to retry the failed cells"
        )
