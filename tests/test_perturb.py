from __future__ import annotations

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from auditkit.ops.perturb import Affine, rotations, spatial_grid

X = torch.rand(4, 3, 20, 28, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("angle", [0.0, 10.0, 45.0, 90.0, -135.0, 180.0])
@pytest.mark.parametrize(
    ("interp", "mode"), [("bilinear", InterpolationMode.BILINEAR), ("nearest", InterpolationMode.NEAREST)]
)
def test_rotation_matches_torchvision(angle: float, interp: str, mode: InterpolationMode) -> None:
    mine = Affine(interpolation=interp)(X, rotations(torch.full((4,), angle)))  # type: ignore[arg-type]
    ref = TF.rotate(X, angle, interpolation=mode)
    if interp == "bilinear":
        assert (mine - ref).abs().max() < 1e-4
    else:  # sampling points that fall exactly between two pixels may round the other way
        assert ((mine - ref).abs() > 1e-6).float().mean() < 0.01


@pytest.mark.parametrize(("angle", "dx", "dy"), [(30.0, 2.0, -1.0), (-75.0, -3.0, 2.0), (0.0, 1.5, 0.0)])
def test_rotation_plus_translation_matches_torchvision_affine(angle: float, dx: float, dy: float) -> None:
    mine = Affine()(X, torch.tensor([[angle, dx, dy]] * 4))
    # torchvision's affine turns clockwise for a positive angle; rotate (and auditkit) counter-clockwise
    ref = TF.affine(
        X, angle=-angle, translate=[dx, dy], scale=1.0, shear=[0.0, 0.0], interpolation=InterpolationMode.BILINEAR
    )
    assert (mine - ref).abs().max() < 1e-4


def test_per_sample_parameters_and_fills() -> None:
    params = torch.tensor([[0.0, 0.0, 0.0], [90.0, 0.0, 0.0], [0.0, 3.0, 0.0], [45.0, 0.0, 0.0]])
    out = Affine(fill="border")(X, params)
    torch.testing.assert_close(out[0], X[0], atol=1e-5, rtol=0)
    assert not bool((out[3] == 0).any())  # border fill leaves no black corners
    zeros = Affine(fill="zeros")(X[3:4], params[3:4])
    assert bool((zeros[0, :, 0, 0] == 0).all())


def test_spatial_grid_enumerates_every_combination() -> None:
    grid = spatial_grid(torch.tensor([-10.0, 0.0, 10.0]), torch.tensor([-1.0, 0.0, 1.0]))
    assert grid.shape == (27, 3)
    assert len({tuple(r.tolist()) for r in grid}) == 27
    assert Affine.is_identity(grid).sum() == 1
