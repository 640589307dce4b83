"""The public run path's input contracts: class names from a file, the near-chance warning."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from auditkit.config import resolve_config
from auditkit.exceptions import ConfigError
from auditkit.inputs.models import save_model
from auditkit.pipeline import _chance_warning, read_class_names, run_audit
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


class NanUnderGrad(torch.nn.Module):
    """A digits model that is finite on the clean (no-grad) pass and NaN whenever the input needs
    a gradient: every attack step, probe and saliency pass."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        from auditkit.zoo import digits_cnn

        self.net = digits_cnn(num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out * float("nan") if x.requires_grad else out


def nan_under_grad(num_classes: int = 10) -> NanUnderGrad:
    return NanUnderGrad(num_classes)


@pytest.mark.parametrize("check", ["attack", "saliency"])
def test_nan_logits_inside_gradient_passes_fail_the_check_closed(tmp_path: Path, check: str) -> None:
    from auditkit.checks.base import CheckFailure

    torch.manual_seed(0)
    spec = DIGITS_SPEC.merged(arch="tests.test_audit:nan_under_grad")
    model = save_model(NanUnderGrad(), spec, tmp_path / "model.safetensors")
    config = resolve_config(
        {
            "model": str(model),
            "arch": "tests.test_audit:nan_under_grad",
            "data": "digits",
            "limit": 16,
            "checks": (check,),
            "epsilons": "0,0.03",
            "device": "cpu",
            "progress": False,
        }
    )
    results = run_audit(config)
    failures = [c for c in results.checks if isinstance(c, CheckFailure)]
    assert [f.check for f in failures] == [check]
    assert re.search(
        rf"check '{check}': the model returned NaN or infinite logits for \d+ of \d+ inputs", failures[0].error
    )
    assert not any(k.startswith(f"{check}.") and "crashed" not in k for k in results.metrics)
