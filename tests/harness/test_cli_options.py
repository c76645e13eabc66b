"""The command line is generated from the specification dataclasses: flags, defaults and choices."""

from __future__ import annotations

from dataclasses import fields

import pytest

from vicinal.experiments.cli import COMPARE_OPTIONS, PREVIEW_OPTIONS, build_parser, spec_values
from vicinal.experiments.spec import STUDY_OVERRIDES, CompareConfig, RunSpec


def test_compare_without_options_is_the_default_config() -> None:
    args = build_parser().parse_args(["compare"])
    assert CompareConfig(**spec_values(args, COMPARE_OPTIONS)) == CompareConfig()
    offered = {f.name for f in fields(CompareConfig) if "cli" in f.metadata}
    assert set(COMPARE_OPTIONS) == offered and "arms" not in offered


def test_flags_convert_to_the_field_types_and_switches_turn_fields_off() -> None:
    args = build_parser().parse_args(
        ["compare", "--sequential", "--no-channels-last", "--dist-timeout", "5", "--mix-layers", "input,fc1"]
        + ["--alpha", "0.4", "--k", "4", "--augmix", "--precision", "bf16"]
    )
    cfg = CompareConfig(**spec_values(args, COMPARE_OPTIONS))
    assert (cfg.parallel, cfg.channels_last, cfg.dist_timeout_s, cfg.mix_layers) == (
        False,
        False,
        5.0,
        ("input", "fc1"),
    )
    assert (cfg.alpha, cfg.k, cfg.augmix, cfg.precision) == (0.4, 4, True, "bf16")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["compare", "--precision", "fp8"])  # choices come from the vocabulary


def test_preview_and_study_offer_their_share_of_the_fields() -> None:
    args = build_parser().parse_args(["preview", "--seed", "3"])
    assert RunSpec(**spec_values(args, PREVIEW_OPTIONS)) == RunSpec(seed=3)
    study = build_parser().parse_args(["study", "reference", "--epochs", "2"])
    assert spec_values(study, STUDY_OVERRIDES, overrides=True) == {"epochs": 2}  # only what was given
