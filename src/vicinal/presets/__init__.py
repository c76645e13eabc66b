"""Study presets shipped with vicinal (TOML files; see vicinal.study)."""
