"""The experiment harness: ``vicinal compare``, ``vicinal study``, ``vicinal report``.

Who owns what, from the bottom up (a module imports only from the rows above it):

* :mod:`~vicinal.experiments.spec` — what a run is: :class:`~vicinal.experiments.spec.RunSpec`,
  :class:`~vicinal.experiments.spec.CompareConfig`, :class:`~vicinal.experiments.spec.CellSpec`,
  :class:`~vicinal.experiments.spec.StudySpec` and their TOML form, the option vocabulary,
  and every check and default, once (the command line is generated from these fields).
  Beside it, with no harness imports of their own but atomic's: :mod:`~vicinal.experiments.models`
  (the model registry, your own ``package.module:factory``),
  :mod:`~vicinal.experiments.augment` (random crop and flip, per-channel normalisation),
  :mod:`~vicinal.experiments.data` (dataset files),
  :mod:`~vicinal.experiments.errors`, :mod:`~vicinal.experiments.testing` (the testing seam:
  fault injection by environment variable); and below spec and data, using only errors:
  :mod:`~vicinal.experiments.atomic` (durable writes, checksum records, validated reads;
  the data package writes its caches through it).
* :mod:`~vicinal.experiments.distributed` (torchrun process groups),
  :mod:`~vicinal.experiments.loader` (in-memory batches and their epoch plans),
  :mod:`~vicinal.experiments.splits` (the training/validation/test split of a spec's data),
  :mod:`~vicinal.experiments.metrics`, :mod:`~vicinal.experiments.corruptions`,
  :mod:`~vicinal.experiments.noise`.
* :mod:`~vicinal.experiments.training` — one epoch loop (:mod:`~vicinal.experiments.training.loop`:
  schedule, checkpoint schema, metrics log, loss totals) driven by the single-model trainer
  (:mod:`~vicinal.experiments.training.single`) and the stacked-seeds trainer
  (:mod:`~vicinal.experiments.training.batched`).
* :mod:`~vicinal.experiments.report` — figures (:mod:`~vicinal.experiments.report.plots`),
  statistics and the rendered report, from saved results only.
* :mod:`~vicinal.experiments.runs` — what runs the trainings: a comparison
  (:mod:`~vicinal.experiments.runs.compare`), a study's cells, seed groups, claims and
  shards (:mod:`~vicinal.experiments.runs.study`), worker processes.
* :mod:`~vicinal.experiments.cli` — the command line.

``.ci/check_import_graph.py`` checks that these imports, counting those inside
functions, form no cycle.
"""

__all__: list[str] = []
