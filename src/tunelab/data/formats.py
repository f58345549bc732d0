"""Row shapes ("formats"), each defined once here and registered by name.

Shapes: `text`; `prompt`/`completion`; OpenAI chat `messages` (system/user/assistant, with an
optional per-assistant-message `weight` 0/1); `text`/`label` classification; `prompt`/`chosen`/
`rejected` preference pairs, also read in OpenAI's DPO form (`input`/`preferred_output`/
`non_preferred_output`) and normalised to the former; a `prompt` alone for online RL, also read in
OpenAI's reinforcement form (`messages` ending with the user's turn), whose other fields travel with it.

A shape says its fields, how it is detected, how it is checked and normalised, the text dedup and
leakage compare, its label (to stratify splits), its token ids and supervised part, its held-out
prompt, its few-shot form and how synth writes it. Check, prepare, dedup, leakage, synth, the tasks
and the few-shot baseline ask the registry and never branch on a shape's name. **To add a shape,
write one `Format` subclass in this module and register it with `register_format`** beside it; the
config's `data.format` choices and the CLI's `--format` come from the registry.

Top-level keys outside a shape's fields (an `id` column, OpenAI's `tools` or `metadata`) are
warnings, since no field can hide among them: a misspelt one shows up as a missing field. Warnings
never reject a row. A shape that `keeps_other_fields` (prompt rows: a grader's `item`) keeps them unwarned. Message keys are checked in `data.checks`.
"""

from __future__ import annotations

import re
from typing import Any

from tunelab.data.checks import MISSING, Unreadable, check_turns, errors, string_problems
from tunelab.data.rows import Problem, Row, type_name
from tunelab.data.tokens import IGNORE, Prompt, chat_prompt, encode_chat, encode_prompt_completion, encode_text

Fields = dict[str, Any]


class Format:
    """One row shape. A capability a shape lacks keeps the default, which says so."""

    name: str = ""
    required: tuple[str, ...] = ()        # fields a row of this shape has (a missing one is named)
    optional: tuple[str, ...] = ()        # other fields it knows (no unknown-key warning)
    detect_by: tuple[tuple[str, ...], ...] = ()  # a row with every field of one of these is of this shape...
    priority: int = 100                   # ...unless a shape with a lower priority matches it first
    label_field: str | None = None        # a class label: splits are stratified on it, `data check` counts it
    demos: bool = False                   # held-out rows can be shown training rows first (`with_demos`)
    synth: bool = False                   # `data synth` writes it (`seed_input`, `compose`)
    answered: bool = False                # synth asks the teacher to answer each new input (`seed_answer`)
    example: Fields = {}                  # one valid row, shown when rows of another shape are given
    keeps_other_fields: bool = False      # other top-level keys are read too (a grader's item), not ignored

    @property
    def known(self) -> tuple[str, ...]:
        return self.required + self.optional

    def detect(self, fields: Fields) -> bool:
        return any(all(key in fields for key in keys) for keys in self.detect_by)

    def check(self, row: Row) -> list[Problem]:
        """The row's problems beyond unknown top-level keys; may raise Unreadable for one that stops the checks."""
        raise NotImplementedError

    def normalize(self, fields: Fields) -> Fields:
        """A valid row in this shape's own field names."""
        return fields

    def text(self, fields: Fields) -> str:
        """The text a row teaches, every part joined: what two rows must share to be duplicates."""
        raise NotImplementedError

    def encode(self, fields: Fields, tokenizer: Any) -> tuple[list[int], list[int]]:
        """Token ids and labels (IGNORE outside the supervised part), before any truncation."""
        raise NotImplementedError(f"{self.name} rows have no single token sequence")

    def supervised_field(self, fields: Fields) -> str:
        """The field holding the last supervised tokens: the one max_length cuts first."""
        raise NotImplementedError

    def token_length(self, fields: Fields, tokenizer: Any, max_length: int) -> tuple[int, str]:
        """(tokens in the row, the field whose supervised tokens max_length would cut, or "")."""
        ids, labels = self.encode(fields, tokenizer)
        cut = any(label != IGNORE for label in labels[max_length:])
        return len(ids), self.supervised_field(fields) if cut else ""

    def generation_prompt(self, fields: Fields, tokenizer: Any) -> Prompt | None:
        """The held-out prompt a model answers and its reference; None when the shape has no answer."""
        return None

    def answer_end(self, references: list[str]) -> str | None:
        """Where a generated answer ends when the model runs on past it (an untuned model does), a string no
        reference holds; None: only the model's own end (a chat turn's end-of-turn token)."""
        return None

    def with_demos(self, fields: Fields, demos: list[Fields], end: str | None = None) -> Fields:
        """The row with training rows shown in context before its prompt (when `demos`); `end` is where
        answers end (`answer_end`), so each shown answer ends there too."""
        raise NotImplementedError

    def query(self, fields: Fields) -> str:
        """The row's input without its answer: what the retrieval baseline matches a held-out prompt against
        (when `demos`)."""
        raise NotImplementedError

    def seed_input(self, fields: Fields) -> str:
        """What synth shows the teacher of a seed row, to write a new one like it."""
        raise NotImplementedError

    def seed_answer(self, fields: Fields) -> str:
        """A seed row's answer, shown to the teacher after its input (when `answered`)."""
        raise NotImplementedError

    def compose(self, new_input: str, answer: str | None, label: Any, seeds: list[Fields]) -> Fields:
        """A new row from the teacher's input (and answer), with the label asked for when the shape has one."""
        raise NotImplementedError


FORMATS: dict[str, Format] = {}


def register_format(shape: Format) -> Format:
    """Add a shape; detection order must be unambiguous, so no two shapes share a priority."""
    tied = [f.name for f in FORMATS.values() if f.priority == shape.priority and f.name != shape.name]
    if tied:
        raise ValueError(f'format "{shape.name}" has the detection priority {shape.priority} of {tied[0]}')
    FORMATS[shape.name] = shape
    return shape


def get_format(name: str) -> Format:
    return FORMATS[name]


def detect_format(fields: Fields) -> str | None:
    """The first shape, by priority, whose fields the row has."""
    found = (f for f in sorted(FORMATS.values(), key=lambda f: f.priority) if f.detect(fields))
    return next((f.name for f in found), None)


def shapes_in_words() -> str:
    """Every shape's required fields in words: "text, prompt+completion, ... or prompt+chosen+rejected"."""
    shapes = ["+".join(f.required) for f in FORMATS.values()]
    return f"{', '.join(shapes[:-1])} or {shapes[-1]}" if len(shapes) > 1 else shapes[0]


def validate_row(row: Row, fmt: str) -> list[Problem]:
    """Every error of one row; an empty list means the row is usable."""
    return errors(inspect_row(row, fmt))


def inspect_row(row: Row, fmt: str) -> list[Problem]:
    """Every problem of one row, warnings (`Problem.warning`) included."""
    shape = FORMATS[fmt]
    try:
        found = shape.check(row)
    except Unreadable as stop:
        found = [stop.problem]
    if shape.keeps_other_fields:
        return found
    return found + [Problem(row.line, key, f"unknown key (expected {', '.join(shape.known)}); ignored",
                            "ignored_key") for key in row.fields if key not in shape.known]


def normalize_row(fields: Fields, fmt: str) -> Fields:
    return FORMATS[fmt].normalize(fields)


def row_text(fields: Fields, fmt: str) -> str:
    """The text dedup and leakage compare rows on."""
    return FORMATS[fmt].text(fields)


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=True)["input_ids"])


def _joined(value: str | list[dict[str, Any]]) -> str:
    """A string field as is; a list of chat turns as their contents, one per line."""
    return value if isinstance(value, str) else "\n".join(m["content"] for m in value)


class Text(Format):
    """Raw text for continued pretraining: every token is learned, EOS appended."""

    name = "text"
    required = ("text",)
    detect_by = (("text",),)
    priority = 50
    example = {"text": "The river Thames flows through London."}
    synth = True

    def check(self, row: Row) -> list[Problem]:
        return string_problems(row, ("text",))

    def text(self, fields: Fields) -> str:
        return fields["text"]

    def encode(self, fields: Fields, tokenizer: Any) -> tuple[list[int], list[int]]:
        return encode_text(fields["text"], tokenizer)

    def supervised_field(self, fields: Fields) -> str:
        return "text"

    def seed_input(self, fields: Fields) -> str:
        return fields["text"]

    def compose(self, new_input: str, answer: str | None, label: Any, seeds: list[Fields]) -> Fields:
        return {"text": new_input}


register_format(Text())


DEMO_SEPARATOR = "\n\n"
# Where a prompt/completion answer ends, the first of these no reference holds: a newline for one-line
# answers, else a blank line (which also separates demos), else a marked separator line.
ANSWER_ENDS = ("\n", DEMO_SEPARATOR, "\n\n###\n\n")


class PromptCompletion(Format):
    """A prompt and the completion learned after it (the prompt may be empty)."""

    name = "prompt_completion"
    required = ("prompt", "completion")
    detect_by = (("prompt", "completion"),)
    priority = 30
    example = {"prompt": "Capital of France?", "completion": " Paris"}
    demos = True
    synth = True
    answered = True

    def check(self, row: Row) -> list[Problem]:
        return string_problems(row, ("prompt", "completion"), may_be_empty=("prompt",))

    def text(self, fields: Fields) -> str:
        return f"{fields['prompt']}\n{fields['completion']}"

    def encode(self, fields: Fields, tokenizer: Any) -> tuple[list[int], list[int]]:
        return encode_prompt_completion(fields["prompt"], fields["completion"], tokenizer)

    def supervised_field(self, fields: Fields) -> str:
        return "completion"

    def generation_prompt(self, fields: Fields, tokenizer: Any) -> Prompt:
        ids = tokenizer(fields["prompt"], add_special_tokens=True)["input_ids"]
        return Prompt(ids, fields["completion"], fields["prompt"])

    def answer_end(self, references: list[str]) -> str | None:
        """The first of ANSWER_ENDS inside no reference: a model that runs on past its answer (an untuned one
        writes the next row, or prose) is cut there, and no reference is ever cut."""
        return next((end for end in ANSWER_ENDS if not any(end in r.strip() for r in references)), None)

    def with_demos(self, fields: Fields, demos: list[Fields], end: str | None = None) -> Fields:
        """Demos separated by a blank line, or by the answer end when answers hold blank lines themselves."""
        separator = end if end and end != "\n" else DEMO_SEPARATOR
        shown = "".join(d["prompt"] + d["completion"] + separator for d in demos)
        return {**fields, "prompt": shown + fields["prompt"]}

    def query(self, fields: Fields) -> str:
        return fields["prompt"]

    def seed_input(self, fields: Fields) -> str:
        return fields["prompt"]

    def seed_answer(self, fields: Fields) -> str:
        return fields["completion"].strip()

    def compose(self, new_input: str, answer: str | None, label: Any, seeds: list[Fields]) -> Fields:
        lead = " " if all(r["completion"].startswith(" ") for r in seeds) else ""
        return {"prompt": new_input, "completion": lead + answer if answer else ""}


register_format(PromptCompletion())


class Messages(Format):
    """An OpenAI chat: assistant turns (weight 1, the default) are learned, the rest is context."""

    name = "messages"
    required = ("messages",)
    detect_by = (("messages",),)
    priority = 10
    example = {"messages": [{"role": "user", "content": "Capital of France?"},
                            {"role": "assistant", "content": "Paris."}]}
    demos = True
    synth = True
    answered = True

    def detect(self, fields: Fields) -> bool:
        return super().detect(fields) and not ends_with_user(fields)

    def check(self, row: Row) -> list[Problem]:
        messages = row.fields.get("messages", MISSING)
        problems = check_turns(row.line, "messages", messages, need_assistant=False)
        if not errors(problems) and not any(m["role"] == "assistant" and m.get("weight", 1) for m in messages):
            problems.append(Problem(row.line, "messages", "no assistant turn to learn from", "no_assistant"))
        return problems

    def text(self, fields: Fields) -> str:
        return _joined(fields["messages"])

    def encode(self, fields: Fields, tokenizer: Any) -> tuple[list[int], list[int]]:
        return encode_chat(fields["messages"], tokenizer)

    def supervised_field(self, fields: Fields) -> str:
        last = max(i for i, m in enumerate(fields["messages"]) if m["role"] == "assistant" and m.get("weight", 1))
        return f"messages[{last}].content"

    def generation_prompt(self, fields: Fields, tokenizer: Any) -> Prompt:
        return chat_prompt(fields["messages"], tokenizer)

    def with_demos(self, fields: Fields, demos: list[Fields], end: str | None = None) -> Fields:
        """Demo conversations become earlier turns; the held-out row's system message stays first."""
        system = [m for m in fields["messages"] if m["role"] == "system"]
        shown = [{"role": m["role"], "content": m["content"]} for d in demos for m in d["messages"]
                 if m["role"] != "system"]
        rest = [m for m in fields["messages"] if m["role"] != "system"]
        return {**fields, "messages": system + shown + rest}

    def query(self, fields: Fields) -> str:
        """The user turns: the system message is often shared by every row, and the answers are not asked."""
        return "\n".join(m["content"] for m in fields["messages"] if m["role"] == "user")

    def seed_input(self, fields: Fields) -> str:
        return next(m["content"] for m in fields["messages"] if m["role"] == "user")

    def seed_answer(self, fields: Fields) -> str:
        return next(m["content"] for m in reversed(fields["messages"]) if m["role"] == "assistant")

    def compose(self, new_input: str, answer: str | None, label: Any, seeds: list[Fields]) -> Fields:
        return {"messages": [{"role": "user", "content": new_input}, {"role": "assistant", "content": answer}]}


register_format(Messages())


class Classification(Format):
    """A text and its class label (a string or an integer); a classifier reads the text alone."""

    name = "classification"
    required = ("text", "label")
    detect_by = (("text", "label"),)
    priority = 40
    example = {"text": "a warm and funny film", "label": "positive"}
    label_field = "label"
    synth = True

    def check(self, row: Row) -> list[Problem]:
        problems = string_problems(row, ("text",))
        label = row.fields.get("label", MISSING)
        if label is MISSING:
            problems.append(Problem(row.line, "label", "missing; expected a string or an integer", "missing_field"))
        elif isinstance(label, bool) or not isinstance(label, (str, int)):
            problems.append(Problem(row.line, "label", f"expected a string or an integer, got {type_name(label)}",
                                    "wrong_label"))
        elif isinstance(label, str) and not label.strip():
            problems.append(Problem(row.line, "label", "empty or whitespace only", "empty"))
        return problems

    def text(self, fields: Fields) -> str:
        return fields["text"]

    def token_length(self, fields: Fields, tokenizer: Any, max_length: int) -> tuple[int, str]:
        n = _count(tokenizer, fields["text"])
        return n, "text" if n > max_length else ""

    def seed_input(self, fields: Fields) -> str:
        return fields["text"]

    def compose(self, new_input: str, answer: str | None, label: Any, seeds: list[Fields]) -> Fields:
        return {"text": new_input, "label": label}


register_format(Classification())


OPENAI_DPO = ("input", "preferred_output", "non_preferred_output")


class Preference(Format):
    """A prompt with a chosen and a rejected answer (strings or chat turns); OpenAI's DPO form is read too."""

    name = "preference"
    required = ("prompt", "chosen", "rejected")
    optional = OPENAI_DPO
    detect_by = (("chosen",), ("rejected",), ("preferred_output",))
    priority = 20
    example = {"prompt": "Pick a colour.", "chosen": "Blue.", "rejected": "I will not."}

    def check(self, row: Row) -> list[Problem]:
        if "input" in row.fields:
            return self._check_openai_dpo(row)
        problems = []
        for key in ("prompt", "chosen", "rejected"):
            value = row.fields.get(key, MISSING)
            if isinstance(value, list):
                problems.extend(check_turns(row.line, key, value, need_assistant=(key != "prompt")))
            else:
                problems.extend(string_problems(row, (key,), may_be_empty=("prompt",)))
        if not errors(problems) and row.fields["chosen"] == row.fields["rejected"]:
            problems.append(Problem(row.line, "rejected", "same as chosen; a pair must differ", "same_pair"))
        return problems

    def _check_openai_dpo(self, row: Row) -> list[Problem]:
        given = row.fields["input"]
        if not isinstance(given, dict) or not isinstance(given.get("messages"), list):
            return [Problem(row.line, "input.messages", f"expected a list of messages, got "
                            f"{type_name(given.get('messages') if isinstance(given, dict) else given)}", "wrong_type")]
        problems = check_turns(row.line, "input.messages", given["messages"], need_assistant=False)
        for key in OPENAI_DPO[1:]:
            problems.extend(check_turns(row.line, key, row.fields.get(key, MISSING), need_assistant=True))
        if not errors(problems) and row.fields["preferred_output"] == row.fields["non_preferred_output"]:
            problems.append(Problem(row.line, "non_preferred_output", "same as preferred_output; a pair must differ",
                                    "same_pair"))
        return problems

    def normalize(self, fields: Fields) -> Fields:
        """OpenAI's DPO form becomes prompt/chosen/rejected message lists."""
        if "input" not in fields:
            return fields
        rest = {k: v for k, v in fields.items() if k not in OPENAI_DPO}
        return {"prompt": fields["input"]["messages"], "chosen": fields["preferred_output"],
                "rejected": fields["non_preferred_output"], **rest}

    def text(self, fields: Fields) -> str:
        return "\n".join(_joined(fields[k]) for k in ("prompt", "chosen", "rejected"))

    def generation_prompt(self, fields: Fields, tokenizer: Any) -> Prompt:
        """The prompt, with the chosen answer as the reference."""
        if isinstance(fields["prompt"], list) or isinstance(fields["chosen"], list):
            prompt = fields["prompt"] if isinstance(fields["prompt"], list) else \
                [{"role": "user", "content": fields["prompt"]}] if fields["prompt"] else []
            chosen = fields["chosen"] if isinstance(fields["chosen"], list) else \
                [{"role": "assistant", "content": fields["chosen"]}]
            return chat_prompt(prompt + chosen, tokenizer)
        ids = tokenizer(fields["prompt"], add_special_tokens=True)["input_ids"]
        return Prompt(ids, fields["chosen"], fields["prompt"])

    def token_length(self, fields: Fields, tokenizer: Any, max_length: int) -> tuple[int, str]:
        sizes = {k: _count(tokenizer, _joined(fields["prompt"]) + _joined(fields[k])) for k in ("chosen", "rejected")}
        longest = max(sizes, key=sizes.get)
        return sizes[longest], longest if sizes[longest] > max_length else ""


register_format(Preference())


TAG = re.compile(r"O|[BI]-\S+")  # BIO (IOB2) tags: O, B-TYPE, I-TYPE


def _string_list(row: Row, key: str) -> tuple[list[str] | None, list[Problem]]:
    """The field as a non-empty list of non-empty strings, or the problem naming the first bad item."""
    value = row.fields.get(key, MISSING)
    if value is MISSING:
        return None, [Problem(row.line, key, "missing; expected a list of strings", "missing_field")]
    if not isinstance(value, list) or not value:
        return None, [Problem(row.line, key, f"expected a non-empty list of strings, got {type_name(value)}",
                              "wrong_type")]
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            return None, [Problem(row.line, f"{key}[{i}]", f"expected a non-empty string, got {item!r}",
                                  "wrong_type")]
    return value, []


class TaggedTokens(Format):
    """Words with one BIO tag each (token classification, e.g. named entities)."""

    name = "tagged_tokens"
    required = ("tokens", "tags")
    detect_by = (("tokens", "tags"),)
    priority = 60
    example = {"tokens": ["Ada", "Lovelace", "lived", "in", "London", "."],
               "tags": ["B-PER", "I-PER", "O", "O", "B-LOC", "O"]}

    def check(self, row: Row) -> list[Problem]:
        tokens, problems = _string_list(row, "tokens")
        tags, tag_problems = _string_list(row, "tags")
        problems += tag_problems
        if tokens is None or tags is None:
            return problems
        if len(tags) != len(tokens):
            return [Problem(row.line, "tags", f"{len(tags)} tags for {len(tokens)} tokens; expected one tag per token",
                            "length_mismatch")]
        bad = next((i for i, tag in enumerate(tags) if not TAG.fullmatch(tag)), None)
        if bad is not None:
            return [Problem(row.line, f"tags[{bad}]", f'expected O, B-TYPE or I-TYPE, got "{tags[bad]}"', "wrong_tag")]
        return []

    def text(self, fields: Fields) -> str:
        """The words, then their tags: the same sentence tagged differently is not a duplicate."""
        return " ".join(fields["tokens"]) + "\n" + " ".join(fields["tags"])

    def token_length(self, fields: Fields, tokenizer: Any, max_length: int) -> tuple[int, str]:
        n = len(tokenizer(fields["tokens"], is_split_into_words=True)["input_ids"])
        return n, "tags" if n > max_length else ""


register_format(TaggedTokens())


class EntitySpans(Format):
    """A text with labelled character spans `[{"start", "end", "label"}]` (end exclusive); a token
    classifier learns them as BIO tags on the text's words."""

    name = "entity_spans"
    required = ("text", "spans")
    detect_by = (("text", "spans"),)
    priority = 35  # before text (50) and classification (40): these rows carry a text too
    example = {"text": "Ada Lovelace lived in London.",
               "spans": [{"start": 0, "end": 12, "label": "PER"}, {"start": 22, "end": 28, "label": "LOC"}]}

    def check(self, row: Row) -> list[Problem]:
        problems = string_problems(row, ("text",))
        spans = row.fields.get("spans", MISSING)
        if spans is MISSING:
            return problems + [Problem(row.line, "spans", "missing; expected a list of {start, end, label}",
                                       "missing_field")]
        if not isinstance(spans, list):
            return problems + [Problem(row.line, "spans", f"expected a list of {{start, end, label}}, got "
                                                          f"{type_name(spans)}", "wrong_type")]
        if problems:
            return problems
        return self._check_spans(row.line, spans, len(row.fields["text"]))

    def _check_spans(self, line: int, spans: list[Any], size: int) -> list[Problem]:
        last_end = 0
        for i, span in sorted(enumerate(spans), key=lambda s: s[1].get("start", 0) if isinstance(s[1], dict) else 0):
            where = f"spans[{i}]"
            if not isinstance(span, dict) or set(span) != {"start", "end", "label"}:
                return [Problem(line, where, f"expected {{start, end, label}}, got {span!r}", "wrong_span")]
            start, end, label = span["start"], span["end"], span["label"]
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)) \
                    or not 0 <= start < end <= size:
                return [Problem(line, where, f"start and end must be integers with 0 <= start < end <= {size} "
                                             f"(the text's length), got {start!r}, {end!r}", "wrong_span")]
            if not isinstance(label, str) or not label.strip() or any(c.isspace() for c in label):
                return [Problem(line, f"{where}.label", f"expected a label without spaces, got {label!r}",
                                "wrong_span")]
            if start < last_end:
                return [Problem(line, where, "overlaps another span; entities must not overlap", "wrong_span")]
            last_end = end
        return []

    def text(self, fields: Fields) -> str:
        return fields["text"]

    def token_length(self, fields: Fields, tokenizer: Any, max_length: int) -> tuple[int, str]:
        n = _count(tokenizer, fields["text"])
        return n, "text" if n > max_length else ""


register_format(EntitySpans())


class Pairs(Format):
    """An anchor and a positive that should embed close together (sentence-embedding training with
    in-batch negatives: every other row's positive is a negative)."""

    name = "pairs"
    required = ("anchor", "positive")
    detect_by = (("anchor", "positive"),)
    priority = 70
    example = {"anchor": "how do I reset my password?", "positive": "To reset your password, open Settings."}

    def check(self, row: Row) -> list[Problem]:
        return string_problems(row, self.required)

    def text(self, fields: Fields) -> str:
        return "\n".join(fields[k] for k in self.required)

    def token_length(self, fields: Fields, tokenizer: Any, max_length: int) -> tuple[int, str]:
        sizes = {k: _count(tokenizer, fields[k]) for k in self.required}
        longest = max(sizes, key=sizes.get)
        return sizes[longest], longest if sizes[longest] > max_length else ""


register_format(Pairs())


class Triplets(Pairs):
    """A pair with a hard negative: a text that should embed farther from the anchor than the positive."""

    name = "triplets"
    required = ("anchor", "positive", "negative")
    detect_by = (("anchor", "positive", "negative"),)
    priority = 65  # before pairs, whose fields it has
    example = {**Pairs.example, "negative": "Our office is open from 9 to 5."}


register_format(Triplets())


def ends_with_user(fields: Fields) -> bool:
    """OpenAI's reinforcement rows: chat `messages` whose last turn is the user's, for the model to answer."""
    messages = fields.get("messages")
    return isinstance(messages, list) and bool(messages) and isinstance(messages[-1], dict) and \
        messages[-1].get("role") == "user"


class PromptOnly(Format):
    """A prompt alone (a string or chat turns ending with a user turn): what online RL answers and scores. Also
    read in OpenAI's reinforcement form, `messages` ending with the user's turn, normalised to `prompt`. Other
    fields (`reference_answer`, ...) stay with the row: a grader reads them as its `item`."""

    name = "prompt"
    required = ("prompt",)
    optional = ("messages",)
    detect_by = (("prompt",),)
    priority = 90  # after every shape that has a prompt and more
    example = {"prompt": "Reply with a JSON object naming the capital of France."}
    keeps_other_fields = True

    def detect(self, fields: Fields) -> bool:
        return super().detect(fields) or ends_with_user(fields)

    def check(self, row: Row) -> list[Problem]:
        key = "prompt" if "prompt" in row.fields or "messages" not in row.fields else "messages"
        value = row.fields.get(key, MISSING)
        if not isinstance(value, list):
            return string_problems(row, ("prompt",))
        problems = check_turns(row.line, key, value, need_assistant=False)
        if key == "messages" and not errors(problems) and value[-1]["role"] != "user":
            problems.append(Problem(row.line, f"{key}[{len(value) - 1}].role", f'the last turn must be the user\'s, '
                                    f'for the model to answer; got "{value[-1]["role"]}"', "wrong_role"))
        return problems

    def normalize(self, fields: Fields) -> Fields:
        if "prompt" in fields or "messages" not in fields:
            return fields
        return {"prompt": fields["messages"], **{k: v for k, v in fields.items() if k != "messages"}}

    def text(self, fields: Fields) -> str:
        return _joined(fields["prompt"])

    def token_length(self, fields: Fields, tokenizer: Any, max_length: int) -> tuple[int, str]:
        n = _count(tokenizer, _joined(fields["prompt"]))
        return n, "prompt" if n > max_length else ""

    def generation_prompt(self, fields: Fields, tokenizer: Any) -> Prompt:
        """The prompt as the policy reads it (chat turns through the template); there is no reference."""
        if isinstance(fields["prompt"], list):
            text = tokenizer.apply_chat_template(fields["prompt"], tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            return Prompt(ids, "", _joined(fields["prompt"]))
        return Prompt(tokenizer(fields["prompt"], add_special_tokens=True)["input_ids"], "", fields["prompt"])


register_format(PromptOnly())
