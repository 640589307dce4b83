"""Independent agreement on real inputs (issue 15): RGB natural-image crops of varied sizes from
scikit-image, a torchvision ResNet-18 trained briefly here, saved as weights only.

auditkit's per-image predictions and clean accuracy must equal a plain torchvision evaluation
(``ImageFolder`` + ``transforms.v2`` + ``DataLoader`` + argmax) with the same preprocessing, and
every misuse seen in the field must give that same number or refuse with its documented code.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from typer.testing import CliRunner

from auditkit.cli import app
from auditkit.config import resolve_config
from auditkit.engine.loop import eval_mode
from auditkit.pipeline import load_inputs, make_engine, run_audit

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
RESIZE, CROP = 72, 64
# one class per scikit-image photograph; crops of it at varied sizes are that class's images
SOURCES = {
    "astronaut": "astronaut",
    "cat": "chelsea",
    "coffee": "coffee",
    "rocket": "rocket",
    "tissue": "immunohistochemistry",
}
CLASSES = tuple(sorted(SOURCES))


@dataclass(frozen=True)
class World:
    root: Path
    model: Path
    multi_head: Path
    reference: dict[str, int]  # "test/<class>/<file>" -> predicted class index, plain torchvision


def _crops(rng: np.random.Generator, image: np.ndarray, n: int) -> list[np.ndarray]:
    h, w = image.shape[:2]
    out = []
    for _ in range(n):
        ch, cw = int(rng.integers(60, min(h, 220))), int(rng.integers(60, min(w, 220)))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        out.append(image[y : y + ch, x : x + cw, :3])
    return out


def _reference_transform() -> object:
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.PILToTensor(),
            transforms.Resize(RESIZE, antialias=True),
            transforms.CenterCrop(CROP),
            transforms.ConvertImageDtype(torch.float32),
            transforms.Normalize(MEAN, STD),
        ]
    )


class MultiHead(nn.Module):
    """A detector-style network: returns (boxes (N, 4), class scores (N, K), landmarks (N, 10))."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        import torchvision

        self.backbone = torchvision.models.resnet18(num_classes=num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits = self.backbone(x)
        return logits[:, :4].tanh(), logits, logits.repeat(1, 2)


def multi_head(num_classes: int = 5) -> MultiHead:
    return MultiHead(num_classes)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    import skimage.data
    import torchvision
    from torch.utils.data import DataLoader

    root = tmp_path_factory.mktemp("natural")
    rng = np.random.default_rng(0)
    for name, source in SOURCES.items():
        image = getattr(skimage.data, source)()
        for split, n in (("train", 24), ("test", 12)):
            for i, crop in enumerate(_crops(rng, image, n)):
                path = root / split / name / f"{i:02d}.{'jpg' if i % 4 == 3 else 'png'}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(crop).save(path)
    transform = _reference_transform()
    train = torchvision.datasets.ImageFolder(str(root / "train"), transform=transform)
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=len(CLASSES))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(4):
        for x, y in DataLoader(train, batch_size=30, shuffle=True):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    net.eval()
    torch.save(net.state_dict(), root / "model.pt")
    heads = MultiHead(len(CLASSES))
    heads.backbone.load_state_dict(net.state_dict())
    torch.save(heads.state_dict(), root / "multi_head.pt")
    test = torchvision.datasets.ImageFolder(str(root / "test"), transform=transform)
    preds: list[int] = []
    with torch.no_grad():
        for x, _ in DataLoader(test, batch_size=16):
            preds.extend(net(x).argmax(1).tolist())
    reference = {str(Path(path).relative_to(root)): int(p) for (path, _), p in zip(test.samples, preds, strict=True)}
    return World(root=root, model=root / "model.pt", multi_head=root / "multi_head.pt", reference=reference)


def _write_manifest(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return path


def _test_rows(world: World) -> list[tuple[str, str]]:
    return [(rel, rel.split("/")[1]) for rel in sorted(world.reference)]


def _values(world: World, data: str, **extra: object) -> dict[str, object]:
    return {
        "model": str(world.model),
        "data": data,
        "arch": "torchvision:resnet18",
        "num_classes": 5,
        "mean": MEAN,
        "std": STD,
        "resize": RESIZE,
        "crop": (CROP, CROP),
        "device": "cpu",
        "progress": False,
        "checks": ("clean",),
        **extra,
    }


def _ours(world: World, data: str, **extra: object) -> tuple[dict[str, str], float]:
    """auditkit's prediction (a class name) per image id, and its reported clean accuracy."""
    cfg = resolve_config(_values(world, data, **extra))
    engine = make_engine(cfg)
    loaded, dataset, _ = load_inputs(cfg, engine)
    with eval_mode(loaded.model):
        pred = engine.predict(loaded.model, dataset).pred
    by_id = {i: dataset.class_names[int(p)] for i, p in zip(dataset.ids, pred, strict=True)}
    accuracy = run_audit(cfg).metrics["clean.accuracy"]
    return by_id, accuracy


def _expected(world: World, ids: list[str]) -> tuple[dict[str, str], float]:
    preds = {i: CLASSES[world.reference[i]] for i in ids}
    correct = [preds[i] == i.split("/")[1] for i in ids]
    return preds, sum(correct) / len(correct)


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def _base_args(world: World, data: str, *extra: str) -> list[str]:
    return [
        "subgroups",
        str(world.model),
        data,
        "--arch",
        "torchvision:resnet18",
        "--num-classes",
        "5",
        "--resize",
        str(RESIZE),
        "--crop",
        str(CROP),
        str(CROP),
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


NORM = ["--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD))]


def test_imagefolder_agrees_exactly_with_plain_torchvision(world: World) -> None:
    ours, accuracy = _ours(world, str(world.root / "test"))
    ids = sorted(world.reference)
    expected, expected_accuracy = _expected(world, ids)
    assert ours == {f"{i.split('/', 1)[1]}": p for i, p in expected.items()}
    assert accuracy == expected_accuracy
    assert 0.2 < accuracy < 1.0  # a briefly trained model: neither chance nor perfect, so errors must match


def test_manifest_of_names_with_class_names_agrees(world: World) -> None:
    manifest = _write_manifest(world.root / "all.csv", _test_rows(world))
    ours, accuracy = _ours(world, str(manifest), class_names=",".join(CLASSES))
    expected, expected_accuracy = _expected(world, sorted(world.reference))
    assert ours == expected and accuracy == expected_accuracy


@pytest.mark.parametrize("keep", [("coffee",), ("astronaut", "cat", "coffee", "tissue")], ids=["one", "missing-one"])
def test_class_subset_refused_without_names_and_right_with_them(world: World, keep: tuple[str, ...]) -> None:
    rows = [r for r in _test_rows(world) if r[1] in keep]
    manifest = _write_manifest(world.root / f"subset-{len(keep)}.csv", rows)
    code, output = _cli(*_base_args(world, str(manifest), *NORM))
    assert code == 2, output
    assert "--class-names" in output and "Traceback" not in output
    ours, accuracy = _ours(world, str(manifest), class_names=",".join(CLASSES))
    expected, expected_accuracy = _expected(world, [r[0] for r in rows])
    assert ours == expected and accuracy == expected_accuracy


def test_sorted_manifest_with_limit_maps_labels_over_the_whole_manifest(world: World) -> None:
    rows = sorted(_test_rows(world), key=lambda r: r[1])
    manifest = _write_manifest(world.root / "sorted.csv", rows)
    ours, accuracy = _ours(world, str(manifest), limit=30)  # names inferred from all 5 labels, with a warning
    expected, expected_accuracy = _expected(world, [r[0] for r in rows[:30]])
    assert ours == expected and accuracy == expected_accuracy
    results = run_audit(resolve_config(_values(world, str(manifest), limit=30)))
    assert results.manifest.class_source.startswith("inferred")
    assert any("--class-names" in w for w in results.manifest.warnings)


def test_dataset_root_with_split_folders_is_refused(world: World) -> None:
    code, output = _cli(*_base_args(world, str(world.root), *NORM))
    assert code == 2, output
    assert str(world.root / "test") in output and "split" in output


def test_tuple_output_is_refused_and_selected_with_output(world: World) -> None:
    args = _base_args(world, str(world.root / "test"), *NORM)
    args[1] = str(world.multi_head)
    args[args.index("torchvision:resnet18")] = "tests.test_agreement:multi_head"
    code, output = _cli(*args)
    assert code == 3, output
    assert "--output" in output and "(N, 4)" not in output and "0: (" in output
    ours, accuracy = _ours(
        world,
        str(world.root / "test"),
        model=str(world.multi_head),
        arch="tests.test_agreement:multi_head",
        output="1",
    )
    expected, expected_accuracy = _ours(world, str(world.root / "test"))
    assert ours == expected and accuracy == expected_accuracy
    code, output = _cli(*args, "--output", "0")  # the 4 box numbers are not 5 class scores
    assert code == 3 and "--output" in output, output


def test_missing_normalisation_is_refused(world: World) -> None:
    code, output = _cli(*_base_args(world, str(world.root / "test")))
    assert code == 2, output
    assert "--mean/--std" in output and "--weights" in output
