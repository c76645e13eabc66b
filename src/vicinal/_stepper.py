"""One epoch/step counter for every stateful class (mixers, collates, layers, datasets).

A plan is a pure function of ``(seed, epoch, step, rank)``; a stateful object only has
to know where it is. :class:`StepCounter` holds that: :meth:`set_epoch` moves to an
epoch and restarts the steps, :meth:`resolve` gives the ``(epoch, step)`` of the next
call (or the caller's explicit ones), and :meth:`advance` counts a call that succeeded,
so a call that raised does not use up a step.
"""

from __future__ import annotations

from vicinal._checks import check_int

__all__ = ["Counted", "StepCounter"]


class StepCounter:
    """Where a stateful object is: its epoch and the count of its successful calls.

    >>> c = StepCounter()
    >>> c.resolve(None, None)
    (0, 0, True)
    >>> c.advance(); c.resolve(None, None)
    (0, 1, True)
    >>> c.set_epoch(3); c.resolve(step=5, epoch=None)
    (3, 5, False)
    >>> c.next_epoch(), c.epoch, c.step
    (3, 4, 0)
    """

    __slots__ = ("epoch", "step")

    def __init__(self, epoch: int = 0, step: int = 0) -> None:
        self.epoch = check_int("epoch", epoch, minimum=0)
        self.step = check_int("step", step, minimum=0)

    def set_epoch(self, epoch: int, step: int = 0) -> None:
        """Move to ``epoch`` and restart the step count at ``step`` (call before each epoch)."""
        self.epoch = check_int("epoch", epoch, minimum=0)
        self.step = check_int("step", step, minimum=0)

    def resolve(self, step: int | None, epoch: int | None) -> tuple[int, int, bool]:
        """``(epoch, step, counted)`` of a call: the explicit values where given, else the
        counter's; ``counted`` says whether the call should :meth:`advance` on success."""
        counted = step is None
        e = self.epoch if epoch is None else check_int("epoch", epoch, minimum=0)
        s = self.step if step is None else check_int("step", step, minimum=0)
        return e, s, counted

    def advance(self) -> None:
        """Count one successful call."""
        self.step += 1

    def next_epoch(self) -> int:
        """Move to the next epoch, restarting the steps; returns the epoch just left."""
        left = self.epoch
        self.set_epoch(left + 1)
        return left


class Counted:
    """The counter's face on a stateful class: :attr:`epoch`, :attr:`step` and
    :meth:`set_epoch`, read from and written to its :class:`StepCounter` ``counter``
    (which the class creates in ``__init__``)."""

    counter: StepCounter

    @property
    def epoch(self) -> int:
        """The current epoch, an int >= 0 (:meth:`set_epoch`)."""
        return self.counter.epoch

    @property
    def step(self) -> int:
        """The step the next call without ``step=`` uses: calls that succeeded since
        :meth:`set_epoch`."""
        return self.counter.step

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch`` and restart the step count (call before each epoch)."""
        self.counter.set_epoch(epoch)
