"""torch.distributed for audits: who am I, which batches are mine, and gathering what each rank found.

An audit is data-parallel: the dataset is cut into the same batch grid a single process would use,
rank ``r`` of ``N`` takes batches ``r, r + N, r + 2N, ...``, and every rank receives every batch's
output in grid order (``all_gather_object``). Each rank then computes the same metrics from the
same per-sample values, so results equal a single-process run's; rank 0 alone writes files.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from auditkit.exceptions import ConfigError

if TYPE_CHECKING:
    import torch
    import torch.distributed as dist
else:
    from auditkit._lazy import lazy

    torch = lazy("torch")
    dist = lazy("torch.distributed")


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` (``local_rank`` on its node)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes outputs and prints (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def shard(self, n_items: int) -> range:
        """Indices of the items (batches) this rank processes: ``rank, rank + size, ...``."""
        return range(self.rank, n_items, self.size)

    def gather(self, mine: Sequence[tuple[int, Any]]) -> list[tuple[int, Any]]:
        """Every rank's ``(index, value)`` pairs, merged and sorted by index, on every rank."""
        if not self.active:
            return sorted(mine, key=lambda kv: kv[0])
        parts: list[list[tuple[int, Any]] | None] = [None] * self.size
        dist.all_gather_object(parts, list(mine))
        merged = [kv for part in parts for kv in (part or [])]
        return sorted(merged, key=lambda kv: kv[0])

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def launched() -> bool:
    """Whether a torch.distributed launcher (torchrun, or any that sets ``WORLD_SIZE``) started us."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device | str, *, required: bool = False) -> World:
    """Join the process group the launcher described in the environment (``env://``).

    nccl on CUDA, gloo otherwise. Without a launcher this is a one-process world, unless
    ``required`` (``--distributed``), which then is a usage error.
    """
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if not launched():
        if required:
            raise ConfigError(
                "--distributed needs a torch.distributed launcher (e.g. torchrun --nproc-per-node 2 -m auditkit ...); "
                "WORLD_SIZE is not set"
            )
        return World()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE is set but {', '.join(missing)} is not; start the audit with torchrun")
    kind = torch.device(device).type if str(device) != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    backend = "nccl" if kind == "cuda" else "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, timeout=_dt.timedelta(minutes=60))
    return World(dist.get_rank(), dist.get_world_size(), local)


def shutdown() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["World", "init", "launched", "shutdown"]
