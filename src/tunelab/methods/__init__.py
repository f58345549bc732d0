"""Fine-tuning strategies, each a module registered by name. Nothing outside this package branches on
a method's name: the run asks the registry. Every module of this package is imported here, so a new
method is one new module and no other edit."""

from tunelab.methods.base import METHODS, Method, count_params, get_method, register_method
from tunelab.settings import import_submodules

import_submodules(__name__, __path__, skip={"base"})

__all__ = ["METHODS", "Method", "count_params", "get_method", "register_method"]
