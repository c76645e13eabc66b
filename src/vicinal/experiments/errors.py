"""The harness's run-level failure, which the command line reports in one line."""

from __future__ import annotations

__all__ = ["RunFailed"]


class RunFailed(RuntimeError):
    """A run stopped for a reason outside its options (a dead rank or worker).

    The message is one line that says what happened and what to do; the command line
    prints it without a traceback. With ``exit_at_once`` the command line then leaves with
    ``os._exit``, skipping interpreter shutdown (see :class:`~vicinal.experiments.distributed.RankFailure`).
    """

    exit_at_once: bool = False
