"""Fine-tuning strategies, each a module registered by name. Nothing outside this package branches on
a method's name: the run asks the registry."""

from tunelab.methods.base import METHODS, Method, count_params, get_method, register_method
from tunelab.methods import full as _full  # noqa: F401  (registers itself)
from tunelab.methods import lora as _lora  # noqa: F401  (registers itself)
from tunelab.methods import qlora as _qlora  # noqa: F401  (registers itself)

__all__ = ["METHODS", "Method", "count_params", "get_method", "register_method"]
