"""OpenAI's grader templates: `{{ sample.output_text }}`, `{{ item.reference_answer }}`, nested `{{ item.a.b[0] }}`.

A template names a variable and nothing else: the text between the braces is parsed as a path under the
`item` or `sample` namespace, never evaluated, so a template on user input runs no code (no Jinja).
"""

from __future__ import annotations

import json
import re
from typing import Any

VARIABLE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
STEP = re.compile(r"\.([^.\[\]\s]+)|\[(\d+)\]")
NAMESPACES = ("item", "sample")

Path = tuple[str, tuple[str | int, ...]]


class MissingVariable(LookupError):
    """A template's variable is not in the sample or item it is rendered with."""


def parse_path(text: str) -> Path:
    """`item.a.b[0]` -> ("item", ("a", "b", 0)); ValueError naming what was expected."""
    text = text.strip()
    namespace = next((n for n in NAMESPACES if text == n or text.startswith((f"{n}.", f"{n}["))), None)
    if namespace is None:
        raise ValueError(f"template {{{{ {text} }}}}: expected a variable under item. or sample., "
                         "e.g. {{ item.reference_answer }}")
    rest, steps, at = text[len(namespace):], [], 0
    while at < len(rest):
        step = STEP.match(rest, at)
        if step is None:
            raise ValueError(f"template {{{{ {text} }}}}: cannot read {rest[at:]!r}; expected .name or [index] steps")
        steps.append(step.group(1) if step.group(1) is not None else int(step.group(2)))
        at = step.end()
    return namespace, tuple(steps)


def variables(template: str) -> list[Path]:
    """Every variable of a template; ValueError for a malformed one or an unclosed `{{`."""
    found = [parse_path(m.group(1)) for m in VARIABLE.finditer(template)]
    if "{{" in VARIABLE.sub("", template):
        raise ValueError("template has a {{ without its closing }}")
    return found


def lookup(namespaces: dict[str, Any], path: Path) -> Any:
    namespace, steps = path
    value = namespaces[namespace]
    for step in steps:
        if isinstance(step, int) and isinstance(value, list) and step < len(value):
            value = value[step]
        elif isinstance(step, str) and isinstance(value, dict) and step in value:
            value = value[step]
        else:
            raise MissingVariable(show(path))
    return value


def show(path: Path) -> str:
    namespace, steps = path
    return namespace + "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in steps)


def render(template: str, namespaces: dict[str, Any]) -> str:
    """The template with each variable replaced by its value (strings as they are, anything else as JSON)."""
    def value_of(match: re.Match[str]) -> str:
        value = lookup(namespaces, parse_path(match.group(1)))
        if value is None:
            raise MissingVariable(match.group(1).strip())
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return VARIABLE.sub(value_of, template)
