"""Running trainings: a comparison (:mod:`.compare`), a study (:mod:`.study`) of cells
(:mod:`.cells`) and seed groups (:mod:`.seed_groups`), in worker processes (:mod:`.processes`)."""

__all__: list[str] = []
