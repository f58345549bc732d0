"""A multi grader's `calculate_output`: arithmetic over its sub-graders' rewards, parsed with `ast` and
walked by hand. Only numbers, the sub-graders' names, + - * / and powers (`^`, as OpenAI writes it, or
`**`), parentheses and min max abs sqrt log exp floor ceil are allowed: nothing is ever `eval`ed."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

MAX_LENGTH = 1000
FUNCTIONS: dict[str, tuple[Callable[..., float], int | None]] = {  # name -> (function, arguments; None: 1 or more)
    "min": (min, None), "max": (max, None), "abs": (abs, 1), "sqrt": (math.sqrt, 1), "log": (math.log, 1),
    "exp": (math.exp, 1), "floor": (math.floor, 1), "ceil": (math.ceil, 1),
}
BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
UNARY: dict[type, Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def parse_formula(text: str, names: list[str]) -> ast.Expression:
    """The formula's tree, every node checked; ValueError saying what is not allowed."""
    if len(text) > MAX_LENGTH:
        raise ValueError(f"longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip().replace("^", "**"), mode="eval")  # Python's ^ is xor, and binds looser than +
    except SyntaxError as err:
        raise ValueError(f"not an arithmetic expression ({err.msg} at character {err.offset})") from None
    except (RecursionError, MemoryError):
        raise ValueError("nested too deeply") from None
    try:
        _check(tree.body, names)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    return tree


def _check(node: ast.AST, names: list[str]) -> None:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ValueError(f"{node.value!r} is not a number")
    elif isinstance(node, ast.Name):
        if node.id not in names:
            raise ValueError(f'unknown name "{node.id}"; expected a grader name ({"|".join(names)})')
    elif isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        _check(node.operand, names)
    elif isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        _check(node.left, names)
        _check(node.right, names)
    elif isinstance(node, ast.Call):
        _check_call(node)
        for arg in node.args:
            _check(arg, names)
    else:
        raise ValueError(f'"{ast.unparse(node)}" is not allowed; expected numbers, grader names, + - * / ^ **, '
                         f"parentheses and {', '.join(FUNCTIONS)}")


def _check_call(node: ast.Call) -> None:
    name = node.func.id if isinstance(node.func, ast.Name) else None
    if name not in FUNCTIONS or node.keywords:
        raise ValueError(f'"{ast.unparse(node)}" is not allowed; functions are {", ".join(FUNCTIONS)}')
    arity = FUNCTIONS[name][1]
    if (arity is None and not node.args) or (arity is not None and len(node.args) != arity) or \
            any(isinstance(a, ast.Starred) for a in node.args):
        raise ValueError(f"{name}() takes {arity or 'one or more'} argument(s), got {len(node.args)}")


def evaluate(tree: ast.Expression, values: dict[str, float]) -> float:
    """The formula's value, in floats (so a power overflows at once instead of building a huge integer);
    ArithmeticError or ValueError when it has none (a division by zero, the log of a negative number)."""
    result = float(_value(tree.body, values))
    if not math.isfinite(result):
        raise ArithmeticError(f"the result is {result}")
    return result


def _value(node: ast.AST, values: dict[str, float]) -> float:
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return float(values[node.id])
    if isinstance(node, ast.UnaryOp):
        return UNARY[type(node.op)](_value(node.operand, values))
    if isinstance(node, ast.BinOp):
        result = BINARY[type(node.op)](_value(node.left, values), _value(node.right, values))
        if isinstance(result, complex):  # a negative number to a fractional power
            raise ValueError("the result is not a real number")
        return result
    function, arity = FUNCTIONS[node.func.id]
    args = [_value(a, values) for a in node.args]
    return float(function(args) if arity is None else function(*args))
