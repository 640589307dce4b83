from __future__ import annotations

import re
from pathlib import Path

import pytest

from auditkit.config import resolve_config
from auditkit.exceptions import ConfigError


def test_cli_over_file_over_defaults(tmp_path: Path) -> None:
    cfg_file = tmp_path / "auditkit.toml"
    cfg_file.write_text('model = "m.safetensors"\ndata = "digits"\nbatch-size = 32\nseed = 5\n')
    cfg = resolve_config({"seed": 9, "device": None}, cfg_file)
    assert cfg.model == str(tmp_path / "m.safetensors")  # relative to the config file
    assert cfg.data == "digits"
    assert cfg.batch_size == 32  # from the file
    assert cfg.seed == 9  # the flag wins
    assert cfg.device == "auto"  # the default


def test_unknown_key_named(tmp_path: Path) -> None:
    cfg_file = tmp_path / "auditkit.toml"
    cfg_file.write_text('model = "m"\ndata = "digits"\nbatchsize = 3\n')
    with pytest.raises(ConfigError, match="unknown setting 'batchsize'; did you mean 'batch_size'"):
        resolve_config({}, cfg_file)


def test_wrong_type_named(tmp_path: Path) -> None:
    cfg_file = tmp_path / "auditkit.toml"
    cfg_file.write_text('model = "m"\ndata = "digits"\nbatch_size = "big"\n')
    with pytest.raises(ConfigError, match=r"batch_size: Input should be a valid integer.*got 'big'"):
        resolve_config({}, cfg_file)


def test_invalid_toml(tmp_path: Path) -> None:
    cfg_file = tmp_path / "auditkit.toml"
    cfg_file.write_text("model = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_config({}, cfg_file)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"device": "tpu"}, "device: must be one of auto, cpu, cuda, mps (or cuda:N), got 'tpu'"),
        ({"device": "cpu:abc"}, "device: must be one of"),
        ({"channels": 2}, "channels: Input should be 1 or 3"),
        ({"mean": (0.1, 0.2)}, "mean: needs 1 or 3 values"),
        ({"std": (0.0,)}, "std: values must be positive"),
        ({"angles": "0:inf"}, "angles"),
        ({"norm": "l3"}, "norm: Input should be 'linf' or 'l2'"),
        ({"cue_size": 0}, "cue_size: Input should be greater than or equal to 1"),
        ({"resize": 256}, "resize needs crop"),
        ({"checks": ("clean", "rotate")}, "checks must be among"),
        ({"model": None}, "no model given"),
    ],
)
def test_validation_messages(values: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"model": "m", "data": "digits"}
    base.update(values)
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_config(base)


def test_check_settings_from_sections_flat_keys_and_flags(tmp_path: Path) -> None:
    from auditkit.checks.rotation import RotationSettings
    from auditkit.checks.shortcut import ShortcutSettings

    cfg_file = tmp_path / "auditkit.toml"
    cfg_file.write_text('model = "m"\ndata = "digits"\ncue-size = 6\n[rotation]\nangles = "0,90"\nfill = "border"\n')
    cfg = resolve_config({"fill": "reflection"}, cfg_file)
    assert cfg.settings(RotationSettings).angles == "0,90"  # from its section
    assert cfg.settings(RotationSettings).fill == "reflection"  # the flag beats the section
    assert cfg.settings(ShortcutSettings).cue_size == 6  # a check's key at the top level
    with pytest.raises(ConfigError, match=r"\[rotation\] must be a table"):
        resolve_config({"model": "m", "data": "digits", "rotation": 3})


def test_manifest_pairs_and_comparable_keys_come_from_the_declarations() -> None:
    from auditkit.config import comparable_keys

    cfg = resolve_config({"model": "m", "data": "digits"})
    pairs = dict(cfg.as_pairs())
    assert pairs["angles"] == "'-180:180:10'" and pairs["cue_size"] == "4" and pairs["amp"] == "'off'"
    assert not {"out", "progress", "resume", "distributed", "stream", "workers"} & set(pairs)
    keys = comparable_keys()
    for key in ("cue_size", "cue", "methods", "saliency_target", "layer", "amp", "amp_attack", "epsilons", "crop"):
        assert key in keys
    for key in ("model", "device", "batch_size", "out", "progress"):
        assert key not in keys
