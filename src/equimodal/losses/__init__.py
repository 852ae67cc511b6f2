"""Loss functions as pure functions of tensors (no modules, no state)."""

from equimodal.losses.task import task_loss

__all__ = ["task_loss"]
