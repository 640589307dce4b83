"""Real datasets as inputs: Debian's dataset-fashion-mnist (IDX files) read directly and through
torchvision's own FashionMNIST class, and the weights/timm presets against their libraries."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from auditkit.exceptions import ConfigError, DataError
from auditkit.inputs.data import load_dataset, read_idx

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def fashion() -> Path:
    if not (FASHION / "t10k-images-idx3-ubyte.gz").is_file():
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's dataset-fashion-mnist (see .ci/run)")
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    return FASHION


@pytest.fixture(scope="module")
def torchvision_root(fashion: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same files in the layout torchvision's FashionMNIST reads (root/FashionMNIST/raw, unzipped)."""
    root = tmp_path_factory.mktemp("tv")
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in fashion.glob("*-ubyte.gz"):
        with gzip.open(gz, "rb") as src, (raw / gz.name.removesuffix(".gz")).open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return root


def test_idx_folder_equals_torchvision_fashion_mnist(fashion: Path, torchvision_root: Path) -> None:
    import torchvision

    reference = torchvision.datasets.FashionMNIST(str(torchvision_root), train=False, download=False)
    data = load_dataset(fashion, split="test")
    assert data.images.shape == (10_000, 1, 28, 28) and data.format == "idx"
    assert torch.equal(data.images[:, 0], reference.data)
    assert torch.equal(data.labels, reference.targets)
    assert data.class_source == "label indices" and data.class_names == tuple(str(i) for i in range(10))
    train = load_dataset(fashion, split="train", limit=5)
    assert len(train) == 5 and torch.equal(
        train.images[:, 0],
        torchvision.datasets.FashionMNIST(str(torchvision_root), train=True, download=False).data[:5],
    )


def test_idx_needs_a_split_when_it_holds_several(fashion: Path) -> None:
    with pytest.raises(ConfigError, match="--split"):
        load_dataset(fashion)
    with pytest.raises(ConfigError, match="holds test, train"):
        load_dataset(fashion, split="val")


def test_torchvision_dataset_source_reads_local_root_without_download(torchvision_root: Path) -> None:
    import torchvision

    data = load_dataset(f"torchvision:FashionMNIST:{torchvision_root}", split="test", sample=50, seed=1)
    reference = torchvision.datasets.FashionMNIST(str(torchvision_root), train=False, download=False)
    assert data.class_names == tuple(reference.classes)
    assert data.class_source == "torchvision FashionMNIST.classes"
    picked = [int(i.split("[")[1].rstrip("]")) for i in data.ids]
    assert torch.equal(data.images[:, 0], reference.data[picked])
    assert torch.equal(data.labels, reference.targets[picked])


def test_torchvision_dataset_refusals(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="pickle"):
        load_dataset(f"torchvision:CIFAR10:{tmp_path}", split="test")
    with pytest.raises(ConfigError, match="torchvision:<Dataset>:<root>"):
        load_dataset("torchvision:ImageNet:/x", split="test")
    with pytest.raises(DataError, match="download is off"):
        load_dataset(f"torchvision:FashionMNIST:{tmp_path}", split="test")


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path: Path) -> None:
    good = tmp_path / "x-images-idx3-ubyte"
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    good.write_bytes(bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in arr.shape) + arr.tobytes())
    assert np.array_equal(read_idx(good), arr)
    (tmp_path / "short-images-idx3-ubyte").write_bytes(good.read_bytes()[:-1])
    with pytest.raises(DataError, match="declares shape"):
        read_idx(tmp_path / "short-images-idx3-ubyte")
    (tmp_path / "png-images-idx3-ubyte").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "png-images-idx3-ubyte")


def test_torchvision_weights_preset_matches_the_enum(tmp_path: Path) -> None:
    import torchvision
    from PIL import Image
    from torchvision.models import ResNet18_Weights

    from auditkit.inputs.models import ModelSpec, apply_preset
    from auditkit.pipeline import preprocess_for

    weights = ResNet18_Weights.IMAGENET1K_V1
    spec = apply_preset(ModelSpec(weights="torchvision:ResNet18_Weights.IMAGENET1K_V1")).spec
    assert spec.arch == "torchvision:resnet18" and spec.num_classes == 1000
    assert spec.class_names == tuple(weights.meta["categories"])
    # folders named by ImageNet categories map to the enum's indices, not to 0..1
    rng = np.random.default_rng(0)
    for name, (h, w) in (("tabby", (300, 451)), ("espresso", (260, 200))):
        (tmp_path / name).mkdir()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / name / "a.png")
    data = load_dataset(
        tmp_path,
        class_names=spec.class_names,
        num_classes=spec.num_classes,
        preprocess=preprocess_for(spec),
        channels=3,
    )
    assert [data.class_names[int(i)] for i in data.labels] == ["espresso", "tabby"]
    assert [int(i) for i in data.labels] == [weights.meta["categories"].index(n) for n in ("espresso", "tabby")]
    transform = weights.transforms()
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    ours = (data.images.float() / 255 - mean) / std
    for i, rel in enumerate(data.ids):
        theirs = transform(torchvision.transforms.functional.pil_to_tensor(Image.open(tmp_path / rel).convert("RGB")))
        torch.testing.assert_close(ours[i], theirs, atol=1e-6, rtol=0)  # bit-identical up to float rounding


def test_timm_preset_matches_timms_eval_transform() -> None:
    timm = pytest.importorskip("timm")
    from torchvision import transforms as T

    from auditkit.inputs.models import timm_preset

    for name in ("resnet18", "efficientnet_b0"):
        spec = timm_preset(name).spec
        cfg = timm.data.resolve_data_config({}, model=timm.create_model(name, pretrained=False))
        steps = timm.data.create_transform(**cfg).transforms
        resize = next(t for t in steps if isinstance(t, T.Resize))
        crop = next(t for t in steps if isinstance(t, T.CenterCrop))
        assert spec.resize == resize.size or [spec.resize] == list(np.atleast_1d(resize.size))
        assert spec.crop == tuple(crop.size)
        assert spec.mean == tuple(cfg["mean"]) and spec.std == tuple(cfg["std"])
        assert spec.resize_interpolation == cfg["interpolation"]
