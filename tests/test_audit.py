"""The public run path's input contracts: class names from a file, the near-chance warning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from auditkit.audit import _chance_warning, read_class_names, run_audit
from auditkit.config import resolve_config
from auditkit.exceptions import ConfigError
from auditkit.inputs.models import save_model
from tests.conftest import DIGITS_SPEC


def test_class_names_from_a_list_or_a_file(tmp_path: Path) -> None:
    assert read_class_names("cat, dog,fox") == ("cat", "dog", "fox")
    names = tmp_path / "classes.txt"
    names.write_text("T-shirt/top\nShirt, casual\n\n")
    assert read_class_names(str(names)) == ("T-shirt/top", "Shirt, casual")
    for bad in ("cat,,dog", "cat,cat"):
        with pytest.raises(ConfigError, match="--class-names"):
            read_class_names(bad)


def test_near_chance_accuracy_warns(tmp_path: Path, tiny_net: torch.nn.Module) -> None:
    assert _chance_warning(0.9, 10) == () and _chance_warning(0.5, 2) != ()
    model = save_model(tiny_net, DIGITS_SPEC, tmp_path / "model.safetensors")  # untrained: about 10%
    results = run_audit(
        resolve_config(
            {"model": str(model), "data": "digits", "checks": ("clean",), "device": "cpu", "progress": False}
        )
    )
    assert results.metrics["clean.accuracy"] <= 0.15
    assert any("near chance" in w and "--mean/--std" in w for w in results.manifest.warnings)
    assert results.manifest.class_source == "model spec (model.json)"
