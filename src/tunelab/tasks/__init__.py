"""Training paradigms, each registered by name. A task turns rows into token ids and labels, and says
how a held-out row is scored by generation."""

from tunelab.tasks.base import TASKS, Encoded, GenerationCase, Task, get_task, register_task, task_for_format
from tunelab.tasks import causal_lm as _causal_lm  # noqa: F401  (registers itself)
from tunelab.tasks import sft as _sft  # noqa: F401  (registers itself)

__all__ = ["TASKS", "Encoded", "GenerationCase", "Task", "get_task", "register_task", "task_for_format"]
