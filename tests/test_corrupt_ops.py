"""Corruption ops: shapes, range, determinism, size scaling, and agreement with the ``imagecorruptions``
package (ImageNet-C's reference code) on the same images and severities.

Tolerances against the reference at 224 px (values in [0, 1]):

=====================  ==========================================================================
brightness, contrast,  max |diff| <= 1e-4 (same formula; JPEG: the same Pillow encoder, so exact)
saturate,
gaussian_blur,
jpeg_compression
motion_blur            max |diff| <= 1e-4 at the same angle (the angle is drawn at random)
pixelate               max |diff| <= 1/255 + 1e-5 (PIL rounds to uint8 between its two resizes)
defocus_blur           mean |diff| <= 0.007, max <= 0.03 (a pixel-coverage disk instead of an aliased one)
zoom_blur              mean |diff| <= 0.01 (exactly centred zooms; the reference crops whole pixels and
                       is off-centre by up to 0.7 px)
fog                    max |diff| <= 1e-4 given the same fractal; the fractal itself: statistics
gaussian/shot/impulse  statistics of (corrupted - clean): mean within 0.003, std within 0.005
noise
elastic_transform      statistics: mean |corrupted - clean| within 15% of the reference's
=====================  ==========================================================================
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from auditkit.exceptions import ConfigError
from auditkit.ops import corrupt as C

ALL = tuple(C.CORRUPTIONS)


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """scikit-learn's two sample photos, area-resized to 224 x 224: ``(2, 3, 224, 224)`` in [0, 1], on the
    uint8 grid (what the reference gets)."""
    from sklearn.datasets import load_sample_images

    x = torch.from_numpy(np.stack(load_sample_images().images)).permute(0, 3, 1, 2).float()
    return F.interpolate(x, size=(224, 224), mode="area").round().clamp(0, 255) / 255


@pytest.fixture
def icc(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``imagecorruptions.corruptions`` with its numpy 2 / scikit-image rough edges shimmed (``np.float_``,
    ``gaussian(multichannel=)``)."""
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import imagecorruptions.corruptions as module
    from skimage.filters import gaussian

    def shimmed(image: Any, *args: Any, multichannel: bool | None = None, **kwargs: Any) -> Any:
        if multichannel:
            kwargs["channel_axis"] = -1
        return gaussian(image, *args, **kwargs)

    monkeypatch.setattr(np, "float_", np.float64, raising=False)
    monkeypatch.setattr(module, "gaussian", shimmed)
    np.random.seed(0)
    return module


def reference(icc: Any, name: str, x: torch.Tensor, severity: int) -> torch.Tensor:
    """The reference corruption of each image of ``x`` ``(B, 3, H, W)`` (uint8 HWC PIL in, float out)."""
    from PIL import Image

    pixels = (x * 255).round().byte().permute(0, 2, 3, 1).numpy()
    out = [np.asarray(getattr(icc, name)(Image.fromarray(p), severity), dtype=np.float64) / 255 for p in pixels]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize(("size", "channels"), [(28, 1), (28, 3), (224, 1), (224, 3)])
def test_every_corruption_and_severity_keeps_shape_range_and_is_deterministic(size: int, channels: int) -> None:
    x = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(size + channels))
    for name in C.names_for(channels):
        for severity in C.SEVERITIES:
            out = C.corrupt(x, name, severity, torch.Generator().manual_seed(7))
            assert out.shape == x.shape and out.dtype == torch.float32, (name, severity)
            assert bool(torch.isfinite(out).all()) and float(out.min()) >= 0 and float(out.max()) <= 1, name
            again = C.corrupt(x, name, severity, torch.Generator().manual_seed(7))
            assert torch.equal(out, again), (name, severity)
            if C.CORRUPTIONS[name].random and size == 224:
                other = C.corrupt(x, name, severity, torch.Generator().manual_seed(8))
                assert not torch.equal(out, other), (name, severity)
    assert ("saturate" in C.names_for(channels)) == (channels == 3)


@pytest.mark.parametrize(("size", "channels"), [(28, 1), (64, 3)])
def test_per_image_generators_give_each_image_its_own_corruption_in_any_batch(size: int, channels: int) -> None:
    """With one generator per image, the batched corruption of 5 images equals each image corrupted alone
    with its generator: the random fields are drawn per image, the ops applied batched. Bit for bit, but
    for motion blur's FFT (wide kernels), which rounds the last bit by batch size as defocus blur's does."""
    x = torch.rand(5, channels, size, size, generator=torch.Generator().manual_seed(size))
    for name in (n for n in C.names_for(channels) if C.CORRUPTIONS[n].random):
        for severity in (1, 5):

            def gens(seeds: range) -> list[torch.Generator]:
                return [torch.Generator().manual_seed(100 + i) for i in seeds]

            together = C.corrupt(x, name, severity, gens(range(5)))
            alone = torch.cat([C.corrupt(x[i : i + 1], name, severity, gens(range(i, i + 1))) for i in range(5)])
            first_three = C.corrupt(x[:3], name, severity, gens(range(3)))
            single = C.corrupt(x[:1], name, severity, torch.Generator().manual_seed(100))
            ulp = 1e-6 if name == "motion_blur" else 0.0
            torch.testing.assert_close(together, alone, rtol=0, atol=ulp, msg=f"{name} {severity}")
            torch.testing.assert_close(first_three, together[:3], rtol=0, atol=ulp, msg=f"{name} {severity}")
            torch.testing.assert_close(single, together[:1], rtol=0, atol=ulp, msg=f"{name} {severity}")


def test_each_corruption_changes_a_photo_and_harder_is_further(photos: torch.Tensor) -> None:
    """At 224 px every corruption alters the photo, and severity 5 of the monotone ones alters it more than 1."""
    for name in ALL:
        gen = torch.Generator().manual_seed(0)
        mild = float((C.corrupt(photos, name, 1, gen) - photos).abs().mean())
        strong = float((C.corrupt(photos, name, 5, gen) - photos).abs().mean())
        assert mild > 1e-3, name
        if name != "saturate":  # saturate's severities 1-2 desaturate, 3-5 oversaturate
            assert strong > mild, name


def test_bad_arguments_are_config_errors() -> None:
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(ConfigError, match=r"gaussian_noise, shot_noise.*unknown: 'fogg'"):
        C.corrupt(x, "fogg", 1)
    for severity in (0, 6):
        with pytest.raises(ConfigError, match="from 1 to 5"):
            C.corrupt(x, "contrast", severity)
    with pytest.raises(ConfigError, match="saturate needs RGB"):
        C.corrupt(x, "saturate", 1)
    with pytest.raises(ConfigError, match=r"pass a torch\.Generator"):
        C.corrupt(x, "fog", 1)
    with pytest.raises(ConfigError, match="1 or 3 channels"):
        C.corrupt(torch.rand(1, 2, 8, 8), "contrast", 1)


def test_tiny_images_work() -> None:
    """8 x 8 digits (the smallest builtin data) go through every corruption."""
    x = torch.rand(3, 1, 8, 8)
    for name in C.names_for(1):
        out = C.corrupt(x, name, 5, torch.Generator().manual_seed(0))
        assert out.shape == x.shape and bool(torch.isfinite(out).all()), name


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturate", "gaussian_blur", "jpeg_compression"])
def test_exact_corruptions_match_the_reference(icc: Any, photos: torch.Tensor, name: str) -> None:
    for severity in C.SEVERITIES:
        ours = C.corrupt(photos, name, severity)
        assert float((ours - reference(icc, name, photos, severity)).abs().max()) <= 1e-4, severity


def test_grey_brightness_matches_the_reference(icc: Any, photos: torch.Tensor) -> None:
    """One channel: the reference sees the grey image as RGB (``imagecorruptions.corrupt`` stacks it)."""
    grey = photos.mean(dim=1, keepdim=True).mul(255).round().div(255)
    for severity in (1, 5):
        ref = reference(icc, "brightness", grey.expand(-1, 3, -1, -1), severity)
        assert float((C.corrupt(grey, "brightness", severity) - ref[:, :1]).abs().max()) <= 1e-4


@pytest.mark.parametrize(
    ("name", "mean_tol", "max_tol"),
    [
        ("pixelate", 1 / 255, 1 / 255 + 1e-5),
        ("defocus_blur", 0.007, 0.03),
        ("zoom_blur", 0.01, 0.3),
    ],
)
def test_close_corruptions_match_the_reference(
    icc: Any, photos: torch.Tensor, name: str, mean_tol: float, max_tol: float
) -> None:
    for severity in C.SEVERITIES:
        diff = (C.corrupt(photos, name, severity) - reference(icc, name, photos, severity)).abs()
        assert float(diff.mean()) <= mean_tol and float(diff.max()) <= max_tol, (severity, diff.mean(), diff.max())


@pytest.mark.parametrize("size", [224, 28])
def test_motion_blur_matches_the_reference_at_the_same_angle(icc: Any, photos: torch.Tensor, size: int) -> None:
    """The direction is random in both; given the same angle the kernels are the same (at 28 px the radius
    and sigma are scaled, and the reference is given the scaled ones: the few-taps code path)."""
    x = F.interpolate(photos, size=(size, size), mode="area") if size != 224 else photos
    s = size / 224
    for radius, sigma in C.MOTION_BLUR:
        r = max(1, round(radius * s))
        for angle in (-40.0, 0.0, 33.0):
            ours = C.motion_blur_at(x, radius * s, sigma * s, torch.full((len(x),), angle))
            ref = np.stack(
                [icc._motion_blur(im, radius=r, sigma=sigma * s, angle=angle) for im in x.permute(0, 2, 3, 1).numpy()]
            )
            assert float((ours - torch.from_numpy(ref).permute(0, 3, 1, 2)).abs().max()) <= 1e-4, (radius, angle)


def test_fog_matches_the_reference_given_the_same_fractal(
    icc: Any, photos: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fractal is random; with ours handed to the reference the rest of fog agrees."""
    for severity, (_, decay) in enumerate(C.FOG, start=1):
        maps = C.plasma_fractal(len(photos), 256, decay, torch.Generator().manual_seed(severity))
        fed = iter(maps.double().numpy())
        monkeypatch.setattr(icc, "plasma_fractal", lambda mapsize, wibbledecay, fed=fed: next(fed))
        ours = C.corrupt(photos, "fog", severity, torch.Generator().manual_seed(severity))
        assert float((ours - reference(icc, "fog", photos, severity)).abs().max()) <= 1e-4, severity


def test_plasma_fractal_statistics_match_the_reference(icc: Any) -> None:
    """Drawn differently (torch vs numpy), so compared by statistics over 150 maps of 64 x 64: the mean,
    the spread and the roughness (mean |neighbour difference|) of a map, averaged over maps."""
    for decay in (2.0, 1.4):
        ours = C.plasma_fractal(150, 64, decay, torch.Generator().manual_seed(0)).double().numpy()
        ref = np.stack([icc.plasma_fractal(64, decay) for _ in range(150)])
        for stat, tol in ((lambda m: m.mean(axis=(1, 2)), 0.03), (lambda m: m.std(axis=(1, 2)), 0.01)):
            assert abs(stat(ours).mean() - stat(ref).mean()) <= tol, decay
        rough = [np.abs(np.diff(m, axis=2)).mean() for m in (ours, ref)]
        assert abs(rough[0] - rough[1]) <= 0.1 * rough[1], decay


@pytest.mark.parametrize(
    ("name", "mean_tol", "std_tol"),
    [("gaussian_noise", 0.003, 0.005), ("shot_noise", 0.003, 0.005), ("impulse_noise", 0.003, 0.005)],
)
def test_noise_statistics_match_the_reference(
    icc: Any, photos: torch.Tensor, name: str, mean_tol: float, std_tol: float
) -> None:
    """Random draws differ, so the mean and std of (corrupted - clean) over the 2 x 3 x 224 x 224 values
    are compared (clipping at 0 and 1 shapes them, so the photos' own values matter)."""
    for severity in C.SEVERITIES:
        ours = C.corrupt(photos, name, severity, torch.Generator().manual_seed(severity)) - photos
        ref = reference(icc, name, photos, severity) - photos
        assert abs(float(ours.mean() - ref.mean())) <= mean_tol, severity
        assert abs(float(ours.std() - ref.std())) <= std_tol, severity


def test_elastic_statistics_match_the_reference(icc: Any, photos: torch.Tensor) -> None:
    """A random field drawn differently: the mean |corrupted - clean| over 3 draws of each photo agrees
    within 15%."""
    x = photos.repeat(3, 1, 1, 1)
    for severity in (1, 3, 5):
        ours = float((C.corrupt(x, "elastic_transform", severity, torch.Generator().manual_seed(0)) - x).abs().mean())
        ref = float((reference(icc, "elastic_transform", x, severity) - x).abs().mean())
        assert abs(ours - ref) <= 0.15 * ref, (severity, ours, ref)


def test_blur_scales_with_image_size(photos: torch.Tensor) -> None:
    """Blurring at 28 px what was shrunk from 224 px is close to shrinking what was blurred at 224 px (the
    radius scales with the side); with the 224 px radius it would be far off."""
    small = F.interpolate(photos, size=(28, 28), mode="area")

    def shrink(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(28, 28), mode="area")

    for name in ("gaussian_blur", "defocus_blur"):
        for severity in (3, 5):
            scaled = float((C.corrupt(small, name, severity) - shrink(C.corrupt(photos, name, severity))).abs().mean())
            assert scaled <= 0.012, (name, severity, scaled)
    angles = torch.full((2,), 20.0)
    radius, sigma = C.MOTION_BLUR[4]
    scaled = float(
        (
            C.motion_blur_at(small, radius / 8, sigma / 8, angles)
            - shrink(C.motion_blur_at(photos, radius, sigma, angles))
        )
        .abs()
        .mean()
    )
    unscaled = float(
        (C.motion_blur_at(small, radius, sigma, angles) - shrink(C.motion_blur_at(photos, radius, sigma, angles)))
        .abs()
        .mean()
    )
    assert scaled <= 0.025 < 2 * scaled < unscaled
    # elastic: the displacement field, in pixels, shrinks with the side (same spread relative to the image)
    gen = torch.Generator().manual_seed(0)
    big = C._displacement(4, 224, 224, C.ELASTIC[4], gen, torch.device("cpu")).std()
    tiny = C._displacement(64, 28, 28, C.ELASTIC[4], gen, torch.device("cpu")).std()
    assert 0.85 <= float(tiny * 8 / big) <= 1.15


def test_scale_zooms_out_onto_the_border_mean() -> None:
    x = torch.full((1, 3, 40, 40), 0.2)
    x[..., 10:30, 10:30] = 1.0  # a bright square of 20 x 20 in the middle
    out = C.corrupt(x, "scale", 5)  # side x 0.5
    assert float(out[..., :10, :].sub(0.2).abs().max()) < 1e-6  # the new border is the old border's mean
    bright = (out[0, 0] > 0.6).sum()
    assert int(bright) == 100  # a 10 x 10 square
    rows = torch.nonzero(out[0, 0] > 0.6)[:, 0]
    assert (int(rows.min()), int(rows.max())) == (15, 24)  # centred
    enlarged = C.rescale(x, 2.0)
    assert float(enlarged[..., 5:35, 5:35].min()) > 0.99  # the square now fills the middle 40 x 40 crop
