"""Natural corruptions as batched tensor ops: ``x`` ``(B, C, H, W)`` float in ``[0, 1]`` -> same shape.

The corruptions and their five severities follow ImageNet-C (Hendrycks & Dietterich, "Benchmarking
Neural Network Robustness to Common Corruptions and Perturbations", ICLR 2019), with the parameter
tables of its reference implementation as packaged in ``imagecorruptions`` 1.1.2 (which also made
elastic, fog and zoom size-independent). ``scale`` (zoom out about the centre) is auditkit's own.

Size: the tables are defined for 224 px images. With ``s = min(H, W) / 224``:

- pixel-sized parameters scale linearly with ``s``: the blur radii and sigmas of ``defocus_blur``,
  ``gaussian_blur`` and ``motion_blur``, and the displacement of ``elastic_transform`` (its random
  field is drawn on a grid of at least 224 px and averaged down, so it has the same shape at every size);
- ``zoom_blur``, ``pixelate``, ``fog`` and ``scale`` are already relative to the image size;
- intensity corruptions (noise, brightness, contrast, saturate, JPEG quality) do not depend on size.

At 224 px every corruption uses the reference parameters exactly. Randomness comes only from the
``torch.Generator`` passed in (drawn on its device, the CPU for :meth:`Batch.generator`, then moved to
``x``'s device), so an output depends only on the input, the severity and the generator's state.
Every op is batched; only ``jpeg_compression`` encodes image by image (Pillow's libjpeg, on the CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from auditkit.exceptions import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import Tensor
    from torch.nn import functional as F
else:
    from auditkit._lazy import lazy

    torch = lazy("torch")
    F = lazy("torch.nn.functional")

REFERENCE_SIZE = 224
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

# ImageNet-C parameter tables, severity 1 to 5 (imagecorruptions 1.1.2, corruptions.py)
GAUSSIAN_NOISE = (0.08, 0.12, 0.18, 0.26, 0.38)  # noise std
SHOT_NOISE = (60.0, 25.0, 12.0, 5.0, 3.0)  # photons per unit intensity
IMPULSE_NOISE = (0.03, 0.06, 0.09, 0.17, 0.27)  # share of values set to 0 or 1
DEFOCUS_BLUR = ((3.0, 0.1), (4.0, 0.5), (6.0, 0.5), (8.0, 0.5), (10.0, 0.5))  # disk radius, antialias sigma (px)
GAUSSIAN_BLUR = (1.0, 2.0, 3.0, 4.0, 6.0)  # sigma (px)
MOTION_BLUR = ((10, 3.0), (15, 5.0), (15, 8.0), (15, 12.0), (20, 15.0))  # radius, sigma (px)
ZOOM_BLUR = ((1.0, 1.11, 0.01), (1.0, 1.16, 0.01), (1.0, 1.21, 0.02), (1.0, 1.26, 0.02), (1.0, 1.31, 0.03))
FOG = ((1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))  # strength, fractal wibble decay
BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to HSV value
CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)  # factor about the per-channel mean
ELASTIC = (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12)  # alpha
PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)  # downscale factor
JPEG_QUALITY = (25, 18, 15, 10, 7)
SATURATE = ((0.3, 0.0), (0.1, 0.0), (2.0, 0.0), (5.0, 0.1), (20.0, 0.2))  # HSV saturation * a + b
SCALE = (0.9, 0.8, 0.7, 0.6, 0.5)  # auditkit: side length after zooming out


def size_scale(x: Tensor) -> float:
    """``min(H, W) / 224``: how pixel-sized parameters of the 224 px tables scale for ``x`` ``(B, C, H, W)``."""
    return min(int(x.shape[-2]), int(x.shape[-1])) / REFERENCE_SIZE


# ---------------------------------------------------------------------------------------------- helpers


def _rand(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Uniform ``[0, 1)`` float32 of ``shape`` drawn on the generator's device."""
    return torch.rand(shape, generator=generator, device=generator.device)


def _pad(x: Tensor, pad: tuple[int, int, int, int], mode: str) -> Tensor:
    """``F.pad`` of ``(N, C, H, W)``; ``reflect`` falls back to ``replicate`` where the image is too small."""
    h, w = x.shape[-2:]
    if mode == "reflect" and (max(pad[0], pad[1]) >= w or max(pad[2], pad[3]) >= h):
        mode = "replicate"
    if mode == "symmetric":  # half-sample symmetric (scipy's "reflect"): d c b a | a b c d
        left, right, top, bottom = pad
        if max(left, right) > w or max(top, bottom) > h:
            return F.pad(x, pad, mode="replicate")
        x = torch.cat([x[..., :, :left].flip(-1), x, x[..., :, w - right :].flip(-1)], dim=-1)
        return torch.cat([x[..., :top, :].flip(-2), x, x[..., h - bottom :, :].flip(-2)], dim=-2)
    return F.pad(x, pad, mode=mode)


def _gauss1d(sigma: float, radius: int, device: torch.device) -> Tensor:
    """Normalised Gaussian weights ``(2 * radius + 1,)``."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / max(sigma, 1e-12)) ** 2)
    return (k / k.sum()).to(device=device, dtype=torch.float32)


FFT_TAPS = 64  # kernels with more taps than this are applied through the FFT


def _fft_correlate(padded: Tensor, kernel: Tensor) -> Tensor:
    """Valid correlation of ``padded`` ``(B, C, Hp, Wp)`` with ``kernel`` ``(kh, kw)`` or per image
    ``(B, 1, kh, kw)`` through the FFT: ``(B, C, Hp - kh + 1, Wp - kw + 1)``."""
    hp, wp = padded.shape[-2:]
    kh, kw = kernel.shape[-2:]
    spectrum = torch.fft.rfft2(padded.float(), s=(hp, wp))
    k = torch.fft.rfft2(kernel.float().flip(-2, -1), s=(hp, wp))
    full = torch.fft.irfft2(spectrum * k, s=(hp, wp))
    return full[..., kh - 1 :, kw - 1 :]


def _filter(x: Tensor, kernel: Tensor, mode: str) -> Tensor:
    """Correlate every channel of ``x`` ``(B, C, H, W)`` with ``kernel`` ``(kh, kw)`` (odd sides), same size;
    large kernels through the FFT."""
    b, c, h, w = x.shape
    kh, kw = kernel.shape
    flat = _pad(x.reshape(b * c, 1, h, w), (kw // 2, kw // 2, kh // 2, kh // 2), mode)
    if kh * kw > FFT_TAPS:
        return _fft_correlate(flat, kernel.to(x.device)).reshape(b, c, h, w).to(x.dtype)
    return F.conv2d(flat, kernel.to(x)[None, None]).reshape(b, c, h, w)


def gaussian_filter(x: Tensor, sigma: float, *, truncate: float = 4.0, mode: str = "replicate") -> Tensor:
    """scipy's ``gaussian_filter`` over H and W of ``x`` ``(B, C, H, W)`` (radius ``int(truncate*sigma+0.5)``;
    ``replicate`` is scipy's ``nearest``, ``symmetric`` its ``reflect``), as two 1-D passes."""
    radius = int(truncate * sigma + 0.5)
    if radius == 0:
        return x
    k = _gauss1d(sigma, radius, x.device)
    if (2 * radius + 1) ** 2 > FFT_TAPS:  # one 2-D pass through the FFT (the padding is separable too)
        return _filter(x, k[:, None] * k[None, :], mode)
    return _filter(_filter(x, k[None, :], mode), k[:, None], mode)


def rgb_to_hsv_value(x: Tensor) -> tuple[Tensor, Tensor]:
    """HSV value ``V = max`` and saturation ``S = (max - min) / max`` (0 where ``V = 0``) of ``x`` ``(B, 3, H, W)``,
    each ``(B, 1, H, W)``."""
    v = x.amax(dim=1, keepdim=True)
    delta = v - x.amin(dim=1, keepdim=True)
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    return v, s


# ---------------------------------------------------------------------------------------------- noise


def gaussian_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Add N(0, c^2) to every value."""
    return _gaussian_noise_apply(x, severity, _gaussian_noise_draw(x, severity, generator))


def _gaussian_noise_draw(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    return torch.randn(tuple(x.shape), generator=generator, device=generator.device)


def _gaussian_noise_apply(x: Tensor, severity: int, noise: Tensor) -> Tensor:
    return (x + GAUSSIAN_NOISE[severity - 1] * noise.to(x.device)).clamp(0, 1)


def shot_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Poisson photon noise: ``Poisson(x * c) / c``."""
    return _clamp_apply(x, severity, _shot_noise_draw(x, severity, generator))


def _shot_noise_draw(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    c = SHOT_NOISE[severity - 1]
    rate = (x.float() * c).to(generator.device)
    return torch.poisson(rate, generator=generator) / c


def _clamp_apply(x: Tensor, severity: int, drawn: Tensor) -> Tensor:
    return drawn.to(x.device).clamp(0, 1)


def impulse_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Salt and pepper: each value independently becomes 1 or 0 (even odds) with probability c."""
    return _impulse_noise_apply(x, severity, _impulse_noise_draw(x, severity, generator))


def _impulse_noise_draw(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """``(B, 2, C, H, W)`` bool: which values flip, and to salt (1) or pepper (0)."""
    c = IMPULSE_NOISE[severity - 1]
    flip = _rand(tuple(x.shape), generator) < c
    salt = _rand(tuple(x.shape), generator) < 0.5
    return torch.stack([flip, salt], dim=1)


def _impulse_noise_apply(x: Tensor, severity: int, drawn: Tensor) -> Tensor:
    flip, salt = drawn.to(x.device).unbind(dim=1)
    return torch.where(flip, salt.to(x.dtype), x)


# ---------------------------------------------------------------------------------------------- blur


def disk_kernel(radius: float, alias_sigma: float, device: torch.device | None = None) -> Tensor:
    """A defocus kernel ``(k, k)``: the share of each pixel covered by a disk of ``radius`` pixels (8x8
    supersampled, so fractional radii blur a little), smoothed by a Gaussian of ``alias_sigma`` (radius
    ``max(1, ceil(2 sigma))``, as ImageNet-C's 3x3 GaussianBlur), normalised to sum 1."""
    r = max(radius, 1e-6)
    g = max(1, math.ceil(2 * alias_sigma))
    half = math.ceil(r) + g
    n = 8
    fine = (torch.arange(-half * n, (half + 1) * n, dtype=torch.float64) + 0.5) / n - 0.5
    inside = (fine[:, None] ** 2 + fine[None, :] ** 2 <= r * r).double()
    side = 2 * half + 1
    cover = inside.reshape(side, n, side, n).mean(dim=(1, 3))
    if alias_sigma > 0:
        t = torch.arange(-g, g + 1, dtype=torch.float64)
        k1 = torch.exp(-0.5 * (t / alias_sigma) ** 2)
        k1 = k1 / k1.sum()
        cover = F.conv2d(cover[None, None], (k1[:, None] * k1[None, :])[None, None], padding=g)[0, 0]
    return (cover / cover.sum()).float().to(device or "cpu")


def defocus_blur(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Blur with a disk (radius ``r * s``), reflected borders (OpenCV's default)."""
    radius, alias = DEFOCUS_BLUR[severity - 1]
    s = size_scale(x)
    return _filter(x, disk_kernel(radius * s, alias * s, x.device), "reflect").clamp(0, 1)


def gaussian_blur(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Gaussian blur of sigma ``c * s``, nearest borders (scikit-image's default)."""
    return gaussian_filter(x, GAUSSIAN_BLUR[severity - 1] * size_scale(x)).clamp(0, 1)


def motion_blur_at(x: Tensor, radius: float, sigma: float, angles: Tensor) -> Tensor:
    """ImageNet-C's motion blur of each image along its own direction ``angles`` ``(B,)`` (degrees): a
    one-sided Gaussian (``sigma``) over ``2 * round(radius) + 1`` whole-pixel shifts, edges replicated, applied
    as one kernel per image through the FFT."""
    b, _, h, w = x.shape
    width = 2 * max(1, round(radius)) + 1
    taps = torch.arange(width, dtype=torch.float64)
    k = torch.exp(-(taps**2) / (2 * max(sigma, 1e-12) ** 2))
    k = k / k.sum()
    a = torch.deg2rad(angles.double().cpu())
    dy = -torch.ceil(taps[None, :] * torch.sin(a)[:, None] - 0.5).long()  # (B, width)
    dx = -torch.ceil(taps[None, :] * torch.cos(a)[:, None] - 0.5).long()
    # the reference stops adding shifts once one leaves the image (weights are not renormalised)
    inside = torch.cumprod(((dy.abs() < h) & (dx.abs() < w)).long(), dim=1).bool()
    weights = k[None, :] * inside  # (B, width)
    if width <= 7:  # a few taps: sum the shifted copies (gathers along H then W)
        return _shift_sum(x, dy, dx, weights)
    # the shifts as one kernel per image (correlation: tap i reads x at p - d_i), centre at (width, width)
    side = 2 * width + 1
    kernel = torch.zeros(b, side * side, dtype=torch.float64)
    kernel.scatter_add_(1, (width - dy) * side + (width - dx), weights)
    padded = _pad(x, (width, width, width, width), "replicate")
    kernel = kernel.reshape(b, 1, side, side).to(x.device)
    return _fft_correlate(padded, kernel).to(x.dtype)


def _shift_sum(x: Tensor, dy: Tensor, dx: Tensor, weights: Tensor) -> Tensor:
    """``sum_i weights[:, i] * x`` shifted by ``(dy[:, i], dx[:, i])`` whole pixels, edges replicated
    (``dy``, ``dx``, ``weights``: ``(B, T)``)."""
    b, c, h, w = x.shape
    rows0 = torch.arange(h, device=x.device)
    cols0 = torch.arange(w, device=x.device)
    dy, dx, wt = dy.to(x.device), dx.to(x.device), weights.to(device=x.device, dtype=x.dtype)
    out = torch.zeros_like(x)
    for i in range(dy.shape[1]):
        rows = (rows0[None, :] - dy[:, i, None]).clamp(0, h - 1)  # (B, H)
        cols = (cols0[None, :] - dx[:, i, None]).clamp(0, w - 1)  # (B, W)
        shifted = x.gather(2, rows[:, None, :, None].expand(b, c, h, w))
        out += wt[:, i, None, None, None] * shifted.gather(3, cols[:, None, None, :].expand(b, c, h, w))
    return out


def motion_blur(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Motion blur along a direction drawn per image from U(-45, 45) degrees; radius and sigma ``* s``."""
    return _motion_blur_apply(x, severity, _motion_blur_draw(x, severity, generator))


def _motion_blur_draw(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """``(B,)`` float64 directions in degrees."""
    return torch.rand(x.shape[0], generator=generator, device=generator.device, dtype=torch.float64) * 90 - 45


def _motion_blur_apply(x: Tensor, severity: int, angles: Tensor) -> Tensor:
    radius, sigma = MOTION_BLUR[severity - 1]
    s = size_scale(x)
    return motion_blur_at(x, radius * s, sigma * s, angles).clamp(0, 1)


def zoom_factors(severity: int) -> tuple[float, ...]:
    """The zoom factors averaged at ``severity`` (``numpy.arange(start, stop, step)`` of the table)."""
    import numpy as np

    start, stop, step = ZOOM_BLUR[severity - 1]
    return tuple(float(z) for z in np.arange(start, stop, step))


def centre_zoom(x: Tensor, factor: float) -> Tensor:
    """Zoom ``x`` ``(B, C, H, W)`` into its centre by ``factor`` >= 1, same size: bilinear sampling at
    ``(p - c) / factor + c`` (``c`` the centre), a continuous version of ImageNet-C's ``clipped_zoom``
    (which crops a whole number of pixels, so small images would zoom in coarse steps)."""
    b = x.shape[0]
    theta = torch.zeros(1, 2, 3, device=x.device, dtype=torch.float32)
    theta[0, 0, 0] = theta[0, 1, 1] = 1.0 / factor
    grid = F.affine_grid(theta, [1, 1, *x.shape[-2:]], align_corners=True).expand(b, -1, -1, -1)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=True).to(x.dtype)


def zoom_blur(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """The mean of the image and its zooms into the centre by each factor of the table."""
    factors = zoom_factors(severity)
    out = x.clone()
    for z in factors:
        out += centre_zoom(x, z)
    return (out / (len(factors) + 1)).clamp(0, 1)


# ---------------------------------------------------------------------------------------------- weather


def plasma_fractal(batch: int, mapsize: int, decay: float, generator: torch.Generator) -> Tensor:
    """Diamond-square height maps ``(batch, mapsize, mapsize)`` in ``[0, 1]`` (``mapsize`` a power of 2), drawn
    on the generator's device."""
    m = torch.zeros(batch, mapsize, mapsize, dtype=torch.float64, device=generator.device)
    step = mapsize
    wibble = 100.0

    def wibbled(a: Tensor) -> Tensor:
        u = torch.rand(a.shape, generator=generator, device=generator.device, dtype=torch.float64)
        return a / 4 + wibble * (u * 2 * wibble - wibble)

    while step >= 2:
        half = step // 2
        corner = m[:, 0::step, 0::step]
        square = corner + torch.roll(corner, -1, dims=1)
        square = square + torch.roll(square, -1, dims=2)
        m[:, half::step, half::step] = wibbled(square)
        dr = m[:, half::step, half::step]
        ul = m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wibbled(dr + torch.roll(dr, 1, dims=1) + ul + torch.roll(ul, -1, dims=2))
        m[:, half::step, 0::step] = wibbled(dr + torch.roll(dr, 1, dims=2) + ul + torch.roll(ul, -1, dims=1))
        step //= 2
        wibble /= decay
    low = m.amin(dim=(1, 2), keepdim=True)
    span = (m.amax(dim=(1, 2), keepdim=True) - low).clamp_min(1e-12)
    return ((m - low) / span).float()


def fog(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Add a plasma fractal (one per image, its map the next power of two of the longest side, so the
    same shape relative to the image at every size) and rescale by the image's maximum."""
    return _fog_apply(x, severity, _fog_draw(x, severity, generator))


def _fog_draw(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """``(B, M, M)`` plasma fractals, ``M`` the next power of two of the longest side."""
    b, _, h, w = x.shape
    return plasma_fractal(b, max(2, 1 << (max(h, w) - 1).bit_length()), FOG[severity - 1][1], generator)


def _fog_apply(x: Tensor, severity: int, fractal: Tensor) -> Tensor:
    strength = FOG[severity - 1][0]
    h, w = x.shape[-2:]
    haze = fractal[:, None, :h, :w].to(x.device)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x + strength * haze) * peak / (peak + strength)).clamp(0, 1)


# ---------------------------------------------------------------------------------------------- digital


def brightness(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Add c to the HSV value (hue and saturation kept); grey images: add c."""
    c = BRIGHTNESS[severity - 1]
    if x.shape[1] != 3:
        return (x + c).clamp(0, 1)
    v, _ = rgb_to_hsv_value(x)
    v2 = (v + c).clamp(0, 1)
    # with H and S fixed every RGB component is proportional to V; black (V = 0) has S = 0: grey V'
    return torch.where(v > 0, x * (v2 / v.clamp_min(1e-12)), v2.expand_as(x)).clamp(0, 1)


def contrast(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Scale by c about each image's per-channel mean."""
    c = CONTRAST[severity - 1]
    mean = x.mean(dim=(2, 3), keepdim=True)
    return ((x - mean) * c + mean).clamp(0, 1)


def saturate(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """HSV saturation ``S * a + b`` (hue and value kept); RGB only (``(B, 3, H, W)``)."""
    if x.shape[1] != 3:
        raise ConfigError(f"saturate needs RGB images (3 channels), got {x.shape[1]}")
    a, bias = SATURATE[severity - 1]
    v, s = rgb_to_hsv_value(x)
    s2 = (s * a + bias).clamp(0, 1)
    scaled = v - (v - x) * (s2 / s.clamp_min(1e-12))
    # grey pixels have hue 0 (red) in scikit-image: (V, V(1 - S'), V(1 - S'))
    grey = torch.cat([v, v * (1 - s2), v * (1 - s2)], dim=1)
    return torch.where(s > 0, scaled, grey).clamp(0, 1)


def _box_matrix(n_in: int, n_out: int, device: torch.device) -> Tensor:
    """PIL's BOX resampling from ``n_in`` to ``n_out`` pixels as a ``(n_out, n_in)`` matrix: each output
    averages the inputs whose centres fall inside its footprint."""
    scale = n_in / n_out
    centre = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale
    pos = (torch.arange(n_in, dtype=torch.float64)[None, :] + 0.5 - centre[:, None]) / scale
    m = ((pos > -0.5) & (pos <= 0.5)).double()
    return (m / m.sum(dim=1, keepdim=True).clamp_min(1)).float().to(device)


def _nearest_index(n_in: int, n_out: int, device: torch.device) -> Tensor:
    """PIL's NEAREST resampling from ``n_in`` to ``n_out``: the source index of each output ``(n_out,)``."""
    return (
        ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out))
        .floor()
        .long()
        .clamp(max=n_in - 1)
        .to(device)
    )


def pixelate(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Box-downscale by c (PIL ``BOX``), then nearest-upscale back (PIL ``NEAREST``)."""
    c = PIXELATE[severity - 1]
    h, w = x.shape[-2:]
    sh, sw = max(1, int(h * c)), max(1, int(w * c))
    small = _box_matrix(h, sh, x.device) @ x @ _box_matrix(w, sw, x.device).t()
    return small[..., _nearest_index(sh, h, x.device), :][..., _nearest_index(sw, w, x.device)].clamp(0, 1)


def jpeg_compression(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Encode as JPEG at the table's quality and decode, with Pillow as ImageNet-C does (libjpeg; each
    image on the CPU; grey images as 8-bit greyscale JPEGs)."""
    import io

    import numpy as np
    from PIL import Image

    quality = JPEG_QUALITY[severity - 1]
    pixels = (x.detach().float() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "JPEG", quality=quality)
        decoded = np.asarray(Image.open(buffer), dtype=np.uint8)
        out.append(decoded.reshape(image.shape))
    return (torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.device).float() / 255).to(x.dtype)


def _displacement(b: int, h: int, w: int, alpha: float, generator: torch.Generator, device: torch.device) -> Tensor:
    """Smooth random displacements ``(b, 2, h, w)`` (dy, dx) in pixels of an ``h x w`` image.

    As imagecorruptions' elastic transform: uniform noise of amplitude ``0.005 * H`` blurred by a Gaussian
    of sigma ``0.01 * (H, W)`` (truncated at 3 sigma, symmetric borders), times ``alpha``, drawn on a grid
    ``k`` times finer (``k = ceil(224 / min(H, W))``) so that it has its 224 px shape, read at the centre of
    each k x k cell (strided convolutions), then scaled by ``min(H, W) / 224`` (the same deformation relative
    to the image at every size; exactly the reference at 224 px).
    """
    k = max(1, math.ceil(REFERENCE_SIZE / min(h, w)))
    hf, wf = h * k, w * k
    amp = 0.005 * hf
    noise = (torch.rand((b * 2, 1, hf, wf), generator=generator, device=generator.device) * 2 - 1) * amp
    noise = noise.to(device)
    o = k // 2  # each coarse pixel reads the smoothed fine field at its centre (no averaging: same spread)

    def kernel(sigma: float) -> tuple[Tensor, int]:
        r = int(3 * sigma + 0.5)
        return _gauss1d(sigma, r, torch.device("cpu")).float().to(device), r

    kw, rw = kernel(0.01 * wf)
    kh, rh = kernel(0.01 * hf)
    field = _pad(noise, (rw, rw, rh, rh), "symmetric")
    field = F.conv2d(field[..., :, o:], kw[None, None, None, :], stride=(1, k))
    field = F.conv2d(field[..., o:, :], kh[None, None, :, None], stride=(k, 1))
    scale = alpha * min(h, w) / REFERENCE_SIZE
    return field[..., :h, :w].reshape(b, 2, h, w) * scale


def warp(x: Tensor, displacement: Tensor) -> Tensor:
    """Sample ``x`` ``(B, C, H, W)`` at ``(row + dy, col + dx)`` for ``displacement`` ``(B, 2, H, W)``:
    bilinear, half-sample symmetric borders (scipy ``map_coordinates(order=1, mode="reflect")``)."""
    _, _, h, w = x.shape
    rows = torch.arange(h, device=x.device, dtype=torch.float32)[None, :, None] + displacement[:, 0]
    cols = torch.arange(w, device=x.device, dtype=torch.float32)[None, None, :] + displacement[:, 1]
    grid = torch.stack([(2 * cols + 1) / w - 1, (2 * rows + 1) / h - 1], dim=-1)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False).to(x.dtype)


def elastic_transform(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Warp each image by its own smooth random displacement field (see :func:`_displacement`)."""
    return _elastic_apply(x, severity, _elastic_draw(x, severity, generator))


def _elastic_draw(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """``(B, 2, H, W)`` displacements, computed on the generator's device."""
    b, _, h, w = x.shape
    return _displacement(b, h, w, ELASTIC[severity - 1], generator, generator.device)


def _elastic_apply(x: Tensor, severity: int, displacement: Tensor) -> Tensor:
    return warp(x, displacement.to(x.device)).clamp(0, 1)


def border_mean(x: Tensor) -> Tensor:
    """The mean of each image's outermost ring of pixels, per channel: ``(B, C, 1, 1)``."""
    ring = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1)
    return ring.mean(dim=-1)[..., None, None]


def rescale(x: Tensor, factor: float) -> Tensor:
    """Zoom about the centre by ``factor`` (same size): below 1 the image shrinks (antialiased bilinear)
    onto a canvas filled with its border mean per channel (:func:`border_mean`); above 1 it is enlarged
    (bilinear) and centre-cropped."""
    from torchvision.transforms.v2 import functional as TF

    h, w = x.shape[-2:]
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    resized = TF.resize(x, [nh, nw], antialias=True)
    if factor >= 1:
        top, left = (nh - h) // 2, (nw - w) // 2
        return resized[..., top : top + h, left : left + w].clamp(0, 1)
    out = border_mean(x).expand_as(x).clone()
    top, left = (h - nh) // 2, (w - nw) // 2
    out[..., top : top + nh, left : left + nw] = resized
    return out.clamp(0, 1)


def scale(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Zoom out about the centre to the table's share of the side, border-mean padding (:func:`rescale`)."""
    return rescale(x, SCALE[severity - 1])


# ---------------------------------------------------------------------------------------------- catalogue

CorruptionFn = Callable[["Tensor", int, "torch.Generator"], "Tensor"]
ApplyFn = Callable[["Tensor", int, "Tensor"], "Tensor"]


@dataclass(frozen=True)
class Corruption:
    """One corruption: ``fn(x, severity, generator)``, its ImageNet-C family, whether it draws random
    numbers and whether it needs RGB input. A random one is ``apply(x, severity, draw(x, severity,
    generator))``: ``draw`` makes the random field ``(B, ...)`` on the generator's device (from ``x``'s
    shape; shot noise also reads its pixels, ``reads_pixels``), ``apply`` the batched rest on ``x``'s."""

    name: str
    family: str
    fn: CorruptionFn
    random: bool
    rgb_only: bool = False
    draw: CorruptionFn | None = None
    apply: ApplyFn | None = None
    reads_pixels: bool = False


CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in (
        Corruption("gaussian_noise", "noise", gaussian_noise, True, False, _gaussian_noise_draw, _gaussian_noise_apply),
        Corruption("shot_noise", "noise", shot_noise, True, False, _shot_noise_draw, _clamp_apply, reads_pixels=True),
        Corruption("impulse_noise", "noise", impulse_noise, True, False, _impulse_noise_draw, _impulse_noise_apply),
        Corruption("defocus_blur", "blur", defocus_blur, False),
        Corruption("gaussian_blur", "blur", gaussian_blur, False),
        Corruption("motion_blur", "blur", motion_blur, True, False, _motion_blur_draw, _motion_blur_apply),
        Corruption("zoom_blur", "blur", zoom_blur, False),
        Corruption("fog", "weather", fog, True, False, _fog_draw, _fog_apply),
        Corruption("brightness", "weather", brightness, False),
        Corruption("contrast", "digital", contrast, False),
        Corruption("elastic_transform", "digital", elastic_transform, True, False, _elastic_draw, _elastic_apply),
        Corruption("pixelate", "digital", pixelate, False),
        Corruption("jpeg_compression", "digital", jpeg_compression, False),
        Corruption("saturate", "digital", saturate, False, rgb_only=True),
        Corruption("scale", "geometric", scale, False),
    )
}


def names_for(channels: int) -> tuple[str, ...]:
    """The corruptions that apply to images with ``channels`` channels (``saturate`` needs 3)."""
    return tuple(n for n, c in CORRUPTIONS.items() if channels == 3 or not c.rgb_only)


def check_names(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``names`` if every one is a known corruption, else a :class:`ConfigError` listing the allowed ones."""
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise ConfigError(
            f"corruptions must be among {', '.join(CORRUPTIONS)}; unknown: {', '.join(map(repr, unknown))}"
        )
    if not names:
        raise ConfigError(f"corruptions is empty; give some of {', '.join(CORRUPTIONS)}")
    return tuple(names)


def check_severities(severities: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """``severities`` if each is 1 to 5, else a :class:`ConfigError`."""
    bad = [s for s in severities if s not in SEVERITIES]
    if bad or not severities:
        raise ConfigError(f"severities must be integers from 1 to 5, got {', '.join(map(str, severities)) or 'none'}")
    return tuple(severities)


def corrupt(
    x: Tensor, name: str, severity: int, generator: torch.Generator | Sequence[torch.Generator] | None = None
) -> Tensor:
    """Corruption ``name`` at ``severity`` (1 to 5) of ``x`` ``(B, C, H, W)`` float in ``[0, 1]``, C = 1 or 3
    -> ``(B, C, H, W)`` float32 in ``[0, 1]`` on the same device, always computed in full precision (autocast
    off). Random corruptions need ``generator``: one for the batch, or one per image — then each image's
    corruption depends on its own generator alone, not on which images share its batch (what the check
    uses, so results do not move with the batch size). With one generator per image the random fields
    are drawn image by image on the generators' device and the corruption is applied to the whole batch."""
    check_names([name])
    check_severities([severity])
    spec = CORRUPTIONS[name]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ConfigError(f"corruptions take (B, C, H, W) images with 1 or 3 channels, got shape {tuple(x.shape)}")
    if spec.rgb_only and x.shape[1] != 3:
        raise ConfigError(f"{name} needs RGB images (3 channels); these have {x.shape[1]}")
    if generator is None:
        if spec.random:
            raise ConfigError(f"{name} draws random numbers: pass a torch.Generator")
        generator = torch.Generator()
    with torch.autocast(device_type=x.device.type, enabled=False):
        if isinstance(generator, torch.Generator):
            return spec.fn(x.float(), severity, generator).float()
        gens = list(generator)
        if len(gens) != x.shape[0]:
            raise ConfigError(f"one generator per image: got {len(gens)} for {x.shape[0]} images")
        if not spec.random:
            return spec.fn(x.float(), severity, gens[0] if gens else torch.Generator()).float()
        if not gens:
            return x.float()
        if spec.draw is None or spec.apply is None:  # pragma: no cover - every random corruption has both
            raise AssertionError(f"{name} is random but has no draw/apply pair")
        src = x.float().to(gens[0].device) if spec.reads_pixels else x.float()
        fields = torch.cat([spec.draw(src[i : i + 1], severity, g) for i, g in enumerate(gens)])
        return spec.apply(x.float(), severity, fields).float()
