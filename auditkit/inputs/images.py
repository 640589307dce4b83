"""Small image helpers: tensors to PNG data URIs for self-contained reports."""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image
    from torch import Tensor
    from torchvision.transforms.v2 import functional as TF
else:
    from auditkit._lazy import lazy

    TF = lazy("torchvision.transforms.v2.functional")

THUMBNAIL_MAX = 96


def to_data_uri(image: Tensor, *, max_size: int = THUMBNAIL_MAX) -> str:
    """``image``: ``(C, H, W)`` uint8 -> ``data:image/png;base64,...`` (longest side <= ``max_size``)."""
    img = image.detach().cpu()
    if max(img.shape[-2:]) > max_size:
        scale = max_size / max(img.shape[-2:])
        img = TF.resize(
            img, [max(1, round(img.shape[-2] * scale)), max(1, round(img.shape[-1] * scale))], antialias=True
        )
    pil: Image.Image = TF.to_pil_image(img)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
