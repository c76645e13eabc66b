"""Training: one epoch loop (:mod:`.loop`), driven by one model (:mod:`.single`) or by
the seeds of a study arm stacked into one model (:mod:`.batched`)."""

__all__: list[str] = []
