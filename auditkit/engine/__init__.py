"""Execution: the one loop over a dataset (batches, device, grad mode, progress), torch.distributed
sharding and per-batch resume."""

from auditkit.engine.loop import DEVICES, Batch, Engine, Outcome, Predictions, eval_mode

__all__ = ["DEVICES", "Batch", "Engine", "Outcome", "Predictions", "eval_mode"]
