"""Training paradigms, each a module registered by name. Nothing outside this package branches on a
task's name: the run asks the registry."""

from tunelab.tasks.base import TASKS, Baseline, Prepared, Scores, Task, get_task, register_task, task_for_format
from tunelab.tasks import causal_lm as _causal_lm  # noqa: F401  (registers itself)
from tunelab.tasks import classify as _classify  # noqa: F401  (registers itself)
from tunelab.tasks import sft as _sft  # noqa: F401  (registers itself)

__all__ = ["TASKS", "Baseline", "Prepared", "Scores", "Task", "get_task", "register_task", "task_for_format"]
