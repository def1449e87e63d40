"""Configs are checked where they are read: unknown keys, wrong types and values outside an enum are errors that
name the key, for `TokenizerConfig` and `TrainConfig` alike (one helper, `tokenizer.options`)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vqtok.tokenizer.model import TokenizerConfig
from vqtok.tokenizer.train import TrainConfig


@pytest.mark.parametrize("cls,what", [(TokenizerConfig, "model options"), (TrainConfig, "training options")])
def test_unknown_keys_name_the_key(cls, what):
    with pytest.raises(ValueError, match=rf"unknown {what} \['colour'\]"):
        cls.from_dict({"colour": 1})


@pytest.mark.parametrize("cls,key,value,expected", [
    (TrainConfig, "lr", "abc", "'lr' must be a number, got 'abc'"),
    (TrainConfig, "steps", 1.5, "'steps' must be an integer"),
    (TrainConfig, "steps", True, "'steps' must be an integer"),
    (TrainConfig, "flip", "yes", "'flip' must be true or false"),
    (TrainConfig, "betas", [0.9], r"'betas' must be a list of 2 values"),
    (TrainConfig, "scale", ["a", 2], r"'scale' must be a list of 2 values"),
    (TrainConfig, "split", 3, "'split' must be a string or null"),
    (TrainConfig, "model", [1], "'model' must be a JSON object"),
    (TokenizerConfig, "codebook_size", "1024", "'codebook_size' must be an integer"),
    (TokenizerConfig, "channel_mult", [1, "2"], r"'channel_mult' must be a list of integers"),
    (TokenizerConfig, "normalize_codes", 1, "'normalize_codes' must be true or false"),
])
def test_types_are_checked(cls, key, value, expected):
    with pytest.raises(ValueError, match=expected):
        cls.from_dict({key: value})


@pytest.mark.parametrize("cls,key,value", [(TrainConfig, "recon", "l3"), (TrainConfig, "perceptual", "vgg"),
                                           (TrainConfig, "device", "tpu"), (TokenizerConfig, "gradient", "nope"),
                                           (TokenizerConfig, "codebook_update", "EMA")])
def test_enums_are_checked(cls, key, value):
    with pytest.raises(ValueError, match=rf"'{key}' must be one of .*got '{value}'"):
        cls.from_dict({key: value})
    with pytest.raises(ValueError, match=rf"'{key}' must be one of"):
        cls(**{key: value})  # the constructor checks too


def test_json_forms_are_normalised():
    t = TrainConfig.from_dict({"scale": [1, 1.5], "betas": [0.9, 0.99], "lr": 1, "model": {"channel_mult": [1, 2]}})
    assert t.scale == (1.0, 1.5) and t.betas == (0.9, 0.99) and t.lr == 1.0 and isinstance(t.lr, float)
    m = TokenizerConfig.from_dict({"channel_mult": [1, 2], "image_size": 64})
    assert m.channel_mult == (1, 2) and m.factor == 2


def test_model_options_inside_training_options_are_checked():
    with pytest.raises(ValueError, match=r"unknown model options \['codebook'\]"):
        TrainConfig.from_dict({"model": {"codebook": 64}})
    with pytest.raises(ValueError, match="'codebook_size' must be an integer"):
        TrainConfig.from_dict({"model": {"codebook_size": "64"}})


def test_saved_config_round_trips_and_factor_must_agree():
    cfg = TokenizerConfig(channel_mult=(1, 2, 2), image_size=64)
    saved = json.loads(json.dumps(cfg.to_dict()))  # what config.json holds, "factor" included
    assert TokenizerConfig.from_dict(saved) == cfg
    with pytest.raises(ValueError, match="'factor' is 8 but the other options give 4"):
        TokenizerConfig.from_dict(saved | {"factor": 8})


def test_cli_set_with_a_bad_value_is_a_one_line_error(subprocess_env, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vqtok", "train", str(tmp_path), "--out", str(tmp_path / "o"),
                           "--set", 'lr="abc"'], capture_output=True, text=True, env=subprocess_env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "vqtok train: error: training option 'lr' must be a number, got 'abc'"
