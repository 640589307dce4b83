from __future__ import annotations

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
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['batchsize'\]"):
        resolve_config({}, cfg_file)


def test_wrong_type_named(tmp_path: Path) -> None:
    cfg_file = tmp_path / "auditkit.toml"
    cfg_file.write_text('model = "m"\ndata = "digits"\nbatch_size = "big"\n')
    with pytest.raises(ConfigError, match="batch_size must be an integer, got 'big'"):
        resolve_config({}, cfg_file)


def test_invalid_toml(tmp_path: Path) -> None:
    cfg_file = tmp_path / "auditkit.toml"
    cfg_file.write_text("model = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_config({}, cfg_file)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"device": "tpu"}, "device must be one of auto, cpu, cuda, mps, got 'tpu'"),
        ({"channels": 2}, "channels must be 1 or 3"),
        ({"mean": (0.1, 0.2)}, "mean must have 1 or 3 values"),
        ({"std": (0.0,)}, "std values must be positive"),
        ({"checks": ("clean", "rotate")}, "checks must be among"),
        ({"model": None}, "no model given"),
    ],
)
def test_validation_messages(values: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"model": "m", "data": "digits"}
    base.update(values)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        resolve_config(base)
