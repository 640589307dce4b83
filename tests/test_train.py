"""Training: exact resume, the overfitting guard, and that each method does what it claims."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from auditkit.engine.loop import Engine
from auditkit.exceptions import ConfigError, DataError
from auditkit.inputs.data import ImageDataset, load_dataset
from auditkit.inputs.models import AuditModel, load_model
from auditkit.ops.attacks import PGD
from auditkit.training.train import EpochLog, TrainConfig, catastrophic_overfitting, fit
from tests.conftest import DIGITS_SPEC


def _digits(demo_run: Path, limit: int, split: str = "train") -> ImageDataset:
    return load_dataset(demo_run / "data" / f"{split}.csv", channels=1, image_size=(28, 28), limit=limit)


def _fresh_model() -> AuditModel:
    from auditkit.zoo import digits_cnn

    torch.manual_seed(0)
    return AuditModel(digits_cnn(), DIGITS_SPEC)


def _robust(model: torch.nn.Module, data: ImageDataset, eps: float) -> float:
    x, y = data.images.float() / 255, data.labels
    _, hit = PGD(steps=10)(model.eval(), x, y, eps, generator=torch.Generator().manual_seed(0))
    return 1 - hit.float().mean().item()


def test_resume_after_interruption_gives_identical_weights(demo_run: Path, tmp_path: Path) -> None:
    data = _digits(demo_run, 192)
    cfg = TrainConfig(method="pgd", eps=0.1, attack_steps=2, rotate=20, epochs=3)
    engine = Engine(device="cpu", batch_size=64, seed=3, progress=False)

    full = _fresh_model()
    fit(full, data, engine=engine, config=cfg, checkpoint=tmp_path / "full.pt", key="k")

    def stop_after_first(log: EpochLog) -> None:
        if log.epoch == 1:
            raise KeyboardInterrupt

    interrupted = _fresh_model()
    with pytest.raises(KeyboardInterrupt):
        fit(
            interrupted,
            data,
            engine=engine,
            config=cfg,
            checkpoint=tmp_path / "cut.pt",
            key="k",
            on_epoch=stop_after_first,
        )
    torch.manual_seed(1234)  # whatever happened to the global RNG in between must not matter
    resumed = _fresh_model()
    result = fit(resumed, data, engine=engine, config=cfg, checkpoint=tmp_path / "cut.pt", resume=True, key="k")

    assert result.resumed_from == 1
    assert [log.epoch for log in result.logs] == [1, 2, 3]
    for name, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    # the interruption really happened mid-run: epoch-1 weights differ from the final ones
    assert not torch.equal(
        interrupted.state_dict()["net.features.0.weight"], full.state_dict()["net.features.0.weight"]
    )


def test_resume_refuses_other_settings_and_missing_or_broken_checkpoints(demo_run: Path, tmp_path: Path) -> None:
    data = _digits(demo_run, 64)
    engine = Engine(device="cpu", batch_size=64, seed=0, progress=False)
    ckpt = tmp_path / "c.pt"
    fit(_fresh_model(), data, engine=engine, config=TrainConfig(epochs=1), checkpoint=ckpt, key="a")
    with pytest.raises(ConfigError, match="another model, data or training settings"):
        fit(_fresh_model(), data, engine=engine, config=TrainConfig(epochs=1), checkpoint=ckpt, resume=True, key="b")
    with pytest.raises(ConfigError, match="no checkpoint"):
        fit(_fresh_model(), data, engine=engine, checkpoint=tmp_path / "none.pt", resume=True, key="a")
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(DataError, match="cannot read checkpoint"):
        fit(_fresh_model(), data, engine=engine, checkpoint=ckpt, resume=True, key="a")


def _log(epoch: int, pgd: float, fgsm: float) -> EpochLog:
    return EpochLog(epoch=epoch, loss=1.0, accuracy=0.5, val_clean=0.9, val_pgd=pgd, val_fgsm=fgsm)


def test_catastrophic_overfitting_detector() -> None:
    healthy = [_log(1, 0.3, 0.4), _log(2, 0.4, 0.5), _log(3, 0.42, 0.52)]
    assert not catastrophic_overfitting(healthy)
    collapsed = [*healthy, _log(4, 0.02, 0.85)]  # PGD collapses while FGSM climbs (Wong et al.)
    assert catastrophic_overfitting(collapsed)
    both_drop = [*healthy, _log(4, 0.1, 0.12)]  # a bad epoch for both attacks is not this failure
    assert not catastrophic_overfitting(both_drop)
    assert not catastrophic_overfitting([_log(1, math.nan, math.nan), _log(2, math.nan, math.nan)])


def test_fgsm_training_stops_and_keeps_the_best_epoch_on_catastrophic_overfitting(
    demo_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import auditkit.training.train as train

    data, val = _digits(demo_run, 128), _digits(demo_run, 64, "test")
    seen: list[dict[str, torch.Tensor]] = []
    scripted = iter([(0.5, 0.6), (0.6, 0.7), (0.05, 0.9), (0.5, 0.6)])

    def fake_validate(model: torch.nn.Module, *_: object) -> dict[str, float]:
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        pgd, fgsm = next(scripted)
        return {"val_clean": 0.9, "val_pgd": pgd, "val_fgsm": fgsm}

    monkeypatch.setattr(train, "_validate", fake_validate)
    model = _fresh_model()
    engine = Engine(device="cpu", batch_size=64, seed=0, progress=False)
    result = fit(model, data, engine=engine, config=TrainConfig(method="fgsm", eps=0.1, epochs=4), val=val)
    assert result.overfit_epoch == 3
    assert len(result.logs) == 3  # stopped
    assert result.kept_epoch == 2
    for name, value in seen[1].items():  # the weights validated after epoch 2 are back
        assert torch.equal(model.state_dict()[name], value)


@pytest.mark.parametrize("method", ["fgsm", "trades"])
def test_fast_fgsm_and_trades_raise_robust_accuracy(demo_run: Path, method: str) -> None:
    loaded = load_model(demo_run / "model" / "model.safetensors")
    data, test = _digits(demo_run, 640), _digits(demo_run, 200, "test")
    before = _robust(loaded.model, test, 0.1)
    engine = Engine(device="cpu", batch_size=64, seed=0, progress=False)
    fit(loaded.model, data, engine=engine, config=TrainConfig(method=method, eps=0.1, epochs=3, lr=1e-3))
    after = _robust(loaded.model, test, 0.1)
    assert after >= before + 0.1, (before, after)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "mixup"}, "--method must be one of"),
        ({"norm": "l1"}, "--norm must be one of"),
        ({"method": "pgd", "eps": 0.0}, "--eps must be positive"),
        ({"epochs": 0}, "--epochs and --attack-steps"),
        ({"rotate": 400}, "--rotate takes degrees"),
        ({"lr": -1}, "--lr must be positive"),
    ],
)
def test_train_config_rejects_bad_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)  # type: ignore[arg-type]


def test_label_names_the_method() -> None:
    assert TrainConfig(method="pgd", eps=0.1, rotate=45).label == "PGD-7 Linf eps 0.1 + rotation ±45°"
    assert TrainConfig(rotate=30).label == "rotation ±30°"


def test_describe_leaves_out_validation_figures_it_does_not_have() -> None:
    bare = EpochLog(epoch=1, loss=0.5, accuracy=0.75)
    assert bare.describe() == "loss 0.5000, train acc 75.0%"
    full = _log(1, pgd=0.4, fgsm=0.5)
    assert full.describe() == "loss 1.0000, train acc 50.0%, val clean 90.0%, val PGD-10 40.0%, val FGSM 50.0%"
