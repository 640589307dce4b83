from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auditkit.exceptions import ConfigError, DataError
from auditkit.inputs.data import digits_split, load_dataset
from tests.conftest import write_png


def test_manifest_with_metadata(manifest_dir: Path) -> None:
    data = load_dataset(manifest_dir / "manifest.csv")
    assert len(data) == 12
    assert data.images.shape == (12, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.class_names == ("0", "1", "2")
    assert data.labels.tolist() == [i % 3 for i in range(12)]
    assert data.metadata["site"] == tuple("A" * 8 + "B" * 4)
    assert data.ids[0] == "imgs/0.png"
    expected = np.asarray(Image.open(manifest_dir / "imgs" / "5.png"))
    assert np.array_equal(data.images[5, 0].numpy(), expected)


def test_manifest_labels_checked_against_model_classes(manifest_dir: Path) -> None:
    data = load_dataset(manifest_dir / "manifest.csv", class_names=["0", "1", "2"])
    assert data.labels.tolist()[:3] == [0, 1, 2] and data.class_source == "--class-names"
    # "0" would be the name at index 2 and the index 0: ambiguous, so refused rather than guessed
    with pytest.raises(ConfigError, match="label '0' is both the class name at index 2 and the index 0"):
        load_dataset(manifest_dir / "manifest.csv", class_names=["2", "1", "0"])
    with pytest.raises(DataError, match=r"label 2 is not a class index in \[0, 2\)"):
        load_dataset(manifest_dir / "manifest.csv", class_names=["0", "1"])
    with pytest.raises(DataError, match="label 'x' is not among the classes"):
        (manifest_dir / "x.csv").write_text("path,label\nimgs/0.png,x\n")
        load_dataset(manifest_dir / "x.csv", class_names=["0", "1"])


def test_manifest_missing_columns(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("file,y\na.png,1\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['path', 'label'\]"):
        load_dataset(tmp_path / "m.csv")


@pytest.mark.parametrize("bad", ["../outside.png", "imgs/../../outside.png"])
def test_manifest_path_escape_rejected(manifest_dir: Path, bad: str) -> None:
    write_png(manifest_dir.parent / "outside.png", np.zeros((28, 28)))
    (manifest_dir / "evil.csv").write_text(f"path,label\nimgs/0.png,0\n{bad},1\n")
    with pytest.raises(DataError, match="escapes the manifest's folder"):
        load_dataset(manifest_dir / "evil.csv")


def test_manifest_absolute_path_rejected(manifest_dir: Path) -> None:
    (manifest_dir / "evil.csv").write_text(f"path,label\n{manifest_dir / 'imgs' / '0.png'},0\n")
    with pytest.raises(DataError, match="absolute path"):
        load_dataset(manifest_dir / "evil.csv")


def test_manifest_symlink_out_rejected(manifest_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = write_png(tmp_path_factory.mktemp("elsewhere") / "secret.png", np.zeros((28, 28)))
    os.symlink(outside, manifest_dir / "imgs" / "link.png")
    (manifest_dir / "evil.csv").write_text("path,label\nimgs/link.png,0\n")
    with pytest.raises(DataError, match="escapes"):
        load_dataset(manifest_dir / "evil.csv")


def test_image_folder_symlink_out_rejected(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    write_png(tmp_path / "cat" / "a.png", np.zeros((8, 8)))
    outside = write_png(tmp_path_factory.mktemp("elsewhere") / "secret.png", np.zeros((8, 8)))
    os.symlink(outside, tmp_path / "cat" / "b.png")
    with pytest.raises(DataError, match="outside"):
        load_dataset(tmp_path)


def test_image_folder(tmp_path: Path, rng: np.random.Generator) -> None:
    for cls in ("cat", "dog"):
        for i in range(3):
            write_png(tmp_path / cls / f"{i}.png", rng.integers(0, 256, (10, 12, 3)))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    data = load_dataset(tmp_path)
    assert data.class_names == ("cat", "dog")
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.images.shape == (6, 3, 10, 12)
    resized = load_dataset(tmp_path, image_size=(16, 16), channels=1)
    assert resized.images.shape == (6, 1, 16, 16)


def test_npz_with_group_arrays(tmp_path: Path, rng: np.random.Generator) -> None:
    x = rng.random((5, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 1, 0, 2]), skin=np.array(["a", "b", "a", "b", "a"]))
    data = load_dataset(tmp_path / "d.npz")
    assert data.images.shape == (5, 1, 6, 6)
    assert np.array_equal(data.images[:, 0].numpy(), np.round(x * 255).astype(np.uint8))
    assert data.labels.tolist() == [0, 1, 1, 0, 2]
    assert data.metadata["skin"] == ("a", "b", "a", "b", "a")


def test_npz_rejects_out_of_range_floats(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.full((2, 4, 4), 3.0), y=np.array([0, 1]))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        load_dataset(tmp_path / "d.npz")


def test_builtin_digits_is_the_held_out_split() -> None:
    data = load_dataset("digits")
    split = digits_split()
    assert len(data) == len(split["test"]["y"]) == 540
    assert data.images.shape[1:] == (1, 28, 28)
    assert set(data.metadata["site"]) == {"A", "B"}
    train_b = np.mean(split["train"]["site"] == "B")
    test_b = np.mean(split["test"]["site"] == "B")
    assert train_b < 0.08 < 0.2 < test_b


def test_limit_and_seeded_sample(manifest_dir: Path) -> None:
    assert len(load_dataset(manifest_dir / "manifest.csv", limit=5)) == 5
    a = load_dataset(manifest_dir / "manifest.csv", sample=6, seed=3)
    b = load_dataset(manifest_dir / "manifest.csv", sample=6, seed=3)
    c = load_dataset(manifest_dir / "manifest.csv", sample=6, seed=4)
    assert a.ids == b.ids and len(a) == 6
    assert a.ids != c.ids


def _corrupt(manifest_dir: Path) -> None:
    good = (manifest_dir / "imgs" / "1.png").read_bytes()
    (manifest_dir / "imgs" / "1.png").write_bytes(good[: len(good) // 2])  # truncated
    (manifest_dir / "imgs" / "2.png").write_bytes(b"")  # zero bytes
    (manifest_dir / "imgs" / "3.png").write_text("<html>not an image</html>")


def test_corrupt_images_skipped_with_paths(manifest_dir: Path) -> None:
    _corrupt(manifest_dir)
    data = load_dataset(manifest_dir / "manifest.csv", max_bad_fraction=0.5)
    assert len(data) == 9
    assert sorted(p for p, _ in data.skipped) == ["imgs/1.png", "imgs/2.png", "imgs/3.png"]
    assert "imgs/1.png" not in data.ids
    assert data.metadata["site"] == ("A",) * 5 + ("B",) * 4


def test_too_many_corrupt_images_fail(manifest_dir: Path) -> None:
    _corrupt(manifest_dir)
    with pytest.raises(DataError, match="3 of 12 image files could not be read"):
        load_dataset(manifest_dir / "manifest.csv", max_bad_fraction=0.1)


def test_decompression_bomb_is_rejected(manifest_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 28 * 28 - 1)  # every 28x28 image now trips the warning
    with pytest.raises(DataError, match="decompression bomb"):
        load_dataset(manifest_dir / "manifest.csv")


def test_missing_dataset() -> None:
    with pytest.raises(DataError, match="dataset not found"):
        load_dataset("/nonexistent/data.csv")


def test_npz_class_names_array(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "d.npz",
        x=np.zeros((3, 4, 4), np.uint8),
        y=np.array([2, 0, 1]),
        class_names=np.array(["cat", "dog", "emu"]),
    )
    data = load_dataset(tmp_path / "d.npz")
    assert data.class_names == ("cat", "dog", "emu")
    assert data.labels.tolist() == [2, 0, 1]
    assert "class_names" not in data.metadata


@pytest.mark.parametrize("kwargs", [{}, {"image_size": (16, 20), "channels": 3}])
def test_streamed_images_equal_the_in_memory_ones(manifest_dir: Path, kwargs: dict[str, object]) -> None:
    from auditkit.inputs.data import FileImages

    memory = load_dataset(manifest_dir / "manifest.csv", stream="off", **kwargs)  # type: ignore[arg-type]
    streamed = load_dataset(manifest_dir / "manifest.csv", stream="on", **kwargs)  # type: ignore[arg-type]
    assert isinstance(streamed.images, FileImages) and isinstance(memory.images, torch.Tensor)
    assert streamed.sha256 == memory.sha256  # the same data, whichever way it is held
    assert streamed.images.shape == memory.images.shape
    assert torch.equal(streamed.images[:], memory.images)
    assert torch.equal(streamed.images[3], memory.images[3])
    idx = torch.tensor([5, 0, 7])
    sub = streamed.take(idx)
    assert isinstance(sub.images, FileImages)  # a selection stays on disk
    assert torch.equal(sub.images[:], memory.images[idx])
    assert sub.ids == tuple(memory.ids[i] for i in idx.tolist())


def test_stream_auto_switches_past_the_memory_threshold(manifest_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import auditkit.inputs.data as data_module

    assert not load_dataset(manifest_dir / "manifest.csv").streamed  # 12 small images stay in memory
    monkeypatch.setattr(data_module, "STREAM_BYTES", 3 * 28 * 28)
    assert load_dataset(manifest_dir / "manifest.csv").streamed
    with pytest.raises(Exception, match="--stream must be one of auto, on, off"):
        load_dataset(manifest_dir / "manifest.csv", stream="yes")


def test_streamed_file_changed_during_the_audit_is_a_data_error(manifest_dir: Path) -> None:
    data = load_dataset(manifest_dir / "manifest.csv", stream="on")
    (manifest_dir / "imgs" / "2.png").write_bytes(b"gone")
    with pytest.raises(DataError, match=r"2\.png: could not be read during the audit"):
        data.images[0:4]


# --- the mask column (foreground masks for the shortcut probes' background and position probes)


def _masked_manifest(root: Path, mask_rows: list[str], size: int = 10) -> Path:
    rows = ["path,label,mask"]
    for i, mask in enumerate(mask_rows):
        write_png(root / "imgs" / f"{i}.png", np.full((size, size), 100 + i))
        rows.append(f"imgs/{i}.png,{i % 2},{mask}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


def test_mask_column_is_loaded_as_boolean_foreground(tmp_path: Path) -> None:
    m = np.zeros((10, 10), dtype=np.uint8)
    m[2:5, 3:7] = 255
    write_png(tmp_path / "masks" / "a.png", m)
    data = load_dataset(_masked_manifest(tmp_path, ["masks/a.png", ""]))
    assert data.masks is not None and data.masks.shape == (2, 1, 10, 10) and data.masks.dtype == torch.bool
    assert data.masks[0, 0].nonzero().tolist() == np.argwhere(m > 0).tolist()
    assert not data.masks[1].any()  # an empty cell: no foreground for that image
    assert data.metadata["mask"] == ("masks/a.png", "")
    picked = data.take(torch.tensor([1, 0]))
    assert picked.masks is not None and picked.masks[1].equal(data.masks[0])


def test_masks_follow_the_images_resize_and_change_the_hash(tmp_path: Path) -> None:
    m = np.zeros((10, 10), dtype=np.uint8)
    m[:, :5] = 1  # any non-zero value is foreground
    write_png(tmp_path / "masks" / "a.png", m)
    manifest = _masked_manifest(tmp_path, ["masks/a.png"])
    data = load_dataset(manifest, image_size=(20, 20))
    assert data.masks is not None and data.masks.shape == (1, 1, 20, 20)
    assert data.masks[0, 0, :, :10].all() and not data.masks[0, 0, :, 10:].any()
    before = data.sha256
    write_png(tmp_path / "masks" / "a.png", np.zeros((10, 10)))
    assert load_dataset(manifest, image_size=(20, 20)).sha256 != before


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        ("masks/missing.png", "mask file 'masks/missing.png' not found"),
        ("../outside.png", "escapes the manifest's folder"),
        ("masks/small.png", "is 4x4 px but its image is 10x10"),
        ("masks/bad.png", "cannot read mask"),
    ],
)
def test_bad_masks_are_one_line_data_errors(tmp_path: Path, mask: str, message: str) -> None:
    write_png(tmp_path / "masks" / "small.png", np.zeros((4, 4)))
    (tmp_path / "masks" / "bad.png").write_bytes(b"not a png")
    write_png(tmp_path.parent / "outside.png", np.zeros((10, 10)))
    with pytest.raises(DataError, match=message) as err:
        load_dataset(_masked_manifest(tmp_path, [mask]))
    assert "\n" not in str(err.value) and "m.csv row 2" in str(err.value)


def test_with_masks_checks_the_shape() -> None:
    from auditkit.inputs.data import with_masks

    data = load_dataset("digits", limit=3)
    assert with_masks(data, torch.ones(3, 28, 28)).masks is not None
    with pytest.raises(DataError, match=r"masks must have shape \(3, 1, 28, 28\)"):
        with_masks(data, torch.ones(2, 1, 28, 28))
