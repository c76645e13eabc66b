"""Study presets shipped with vicinal (TOML files; see vicinal.experiments.runs.study).

:data:`PRESETS` is read from this folder, so a new ``<name>.toml`` is a preset by
being shipped here, with no list to keep in step.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["PRESETS"]

PRESETS: tuple[str, ...] = tuple(
    sorted(f.name.removesuffix(".toml") for f in resources.files(__name__).iterdir() if f.name.endswith(".toml"))
)
