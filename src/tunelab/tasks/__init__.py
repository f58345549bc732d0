"""Training paradigms, each a module registered by name. Nothing outside this package branches on a
task's name: the run asks the registry. Every module of this package is imported here, so a new task
is one new module and no other edit."""

from tunelab.settings import import_submodules
from tunelab.tasks.base import TASKS, Baseline, Prepared, Scores, Task, get_task, register_task, task_for_format

import_submodules(__name__, __path__, skip={"base"})

__all__ = ["TASKS", "Baseline", "Prepared", "Scores", "Task", "get_task", "register_task", "task_for_format"]
