"""Heavy modules (torch, torchvision, numpy, PIL, ...) imported on first use.

``torch = lazy("torch")`` at the top of a module binds ``torch`` to a stand-in that imports the
real module the first time one of its attributes is read, so importing the module (to build the
CLI, read a results.json, gate or render a report) does not import torch. The names stay real for
type checkers::

    if TYPE_CHECKING:
        import torch
        from torch import nn
    else:
        torch, nn = lazy("torch"), lazy("torch.nn")

Names that are not modules (``Tensor``, ``spearmanr``) are imported where they are used, or under
``TYPE_CHECKING`` when only annotations use them. ``tests/test_startup.py`` checks that the CLI,
``auditkit gate`` and ``auditkit report`` run without importing torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class LazyModule(types.ModuleType):
    """Stands for the module ``name`` and imports it when an attribute is first read."""

    def __getattr__(self, attr: str) -> Any:
        module = sys.modules.get(self.__name__) or importlib.import_module(self.__name__)
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self.__name__!r}>"


def lazy(name: str) -> Any:
    """A stand-in for module ``name`` that imports it on first attribute access."""
    return LazyModule(name)
