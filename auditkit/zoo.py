"""Model architectures shipped with auditkit, loadable as ``auditkit.zoo:<name>``."""

from __future__ import annotations

from torch import Tensor, nn


class DigitsCNN(nn.Module):
    """A small CNN for ``(N, 1, 28, 28)`` inputs: two conv blocks and two linear layers."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * 7 * 7, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(N, C, 28, 28)`` normalised -> logits ``(N, num_classes)``."""
        return self.classifier(self.features(x))


class SmallCNN(nn.Module):
    """A small CNN for any input size ``(N, C, H, W)``: three conv blocks, global average pooling."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * width, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(N, C, H, W)`` normalised -> logits ``(N, num_classes)``."""
        return self.classifier(self.features(x))


def small_cnn(num_classes: int = 10, in_channels: int = 3, width: int = 16) -> SmallCNN:
    """A size-agnostic CNN (about 25k parameters), e.g. for benchmarks on larger images."""
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, width=width)


def digits_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> DigitsCNN:
    """The demo digits CNN (about 110k parameters)."""
    return DigitsCNN(num_classes=num_classes, in_channels=in_channels, width=width)
