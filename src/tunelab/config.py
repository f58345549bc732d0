"""The run config: one typed, validated model. YAML file plus `key=value` overrides.

Every option's type, default, range and help text lives here; the CLI and the error messages come
from it. Paths inside a YAML file are relative to that file; overrides are relative to the cwd.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from tunelab.data.formats import FORMATS
from tunelab.errors import ConfigError, did_you_mean
from tunelab.methods import METHODS
from tunelab.rundir import RunDir
from tunelab.settings import SECTIONS, Section
from tunelab.tasks import TASKS


class DataConfig(Section):
    train: Path = Field(description="Training data file (JSONL, CSV, Parquet) or datasets directory.")
    eval: Path | None = Field(None, description="Held-out file; if absent, a seeded split of train.")
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="Share of train held out when eval is absent.")
    validation_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of train set aside to validate on when early stopping is on (epochs=auto "
                                     "or train.early_stopping_patience): choosing when to stop never sees eval rows.")
    format: Literal[("auto", *FORMATS)] = Field(  # the registered row formats (data.formats)
        "auto", description="Row schema; auto detects it from the rows' fields.")
    columns: dict[str, str] = Field(
        default_factory=dict, description="Map our field names to yours, e.g. prompt: question.")
    leakage_threshold: float = Field(
        0.0, ge=0, le=1, description="Largest share of eval rows allowed to overlap train before a run stops.")
    leakage_check: bool = Field(True, description="Check eval rows against train for copies before training.")
    near_dup_threshold: float = Field(
        0.5, gt=0, le=1, description="Jaccard similarity (word 2-grams) at which two rows count as near-copies.")
    replay_fraction: float = Field(
        0.0, ge=0, lt=1, description="Share of training examples drawn from shipped general text (against forgetting).")


class TrainConfig(Section):
    epochs: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description="Passes over the training data (ignored when max_steps > 0); auto: up to a budget "
                            "chosen from the data size, validating on schedule, stopping when the task's metric "
                            "stops improving and keeping the best weights.")
    max_steps: int = Field(-1, ge=-1, description="Optimizer steps to run; -1 means use epochs.")
    learning_rate: float | None = Field(
        None, gt=0, lt=1, description="Peak learning rate; default: the method's own (lora 1e-3, full 2e-5).")
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_length: int = Field(512, ge=8, description="Tokens per example; longer rows are cut from the end.")
    seed: int = Field(42, description="Seed for data order, initialisation and sampling.")
    seeds: list[int] | None = Field(None, min_length=2, description="Run once per seed (e.g. [1,2,3]) and report "
                                                                    "each metric's mean and 95% interval.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps spent warming up the rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after warmup.")
    eval_steps: int = Field(0, ge=0, description="Validate every N steps; 0 means once per epoch.")
    logging_steps: int = Field(5, ge=1, description="Log train loss every N steps.")
    save_steps: int = Field(100, ge=0, description="Checkpoint every N steps (0: none; Ctrl-C/SIGTERM still save one).")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept (the best is kept as well).")
    keep_optimizer_state: bool = Field(False, description="Once the run finishes, its checkpoints keep their "
                                       "optimizer, schedule and RNG files (pickles) to train on from; by default "
                                       "they keep their weights only.")
    max_bad_steps: int = Field(3, ge=1, description="Steps in a row with a NaN/Inf loss or gradient (each skipped) "
                                                    "before the run stops.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    liger: bool = Field(False, description="Liger's Triton kernels (RMSNorm, RoPE, SwiGLU) on a CUDA GPU; needs the "
                                           "liger-kernel package (pip install 'tunelab[gpu]'). Off by default until "
                                           "measured on a GPU against the same run without them.")
    precision: Literal["fp32", "bf16", "fp16", "auto"] = Field(
        "auto", description="Autocast dtype of training, validation and every evaluation (weights stay fp32); "
                          "auto: bf16 on a CUDA device or CPU (AVX512-BF16/AMX) that has it natively, else fp32; "
                          "fp16: CUDA only.")
    early_stopping_patience: int = Field(
        0, ge=0, description="Stop after this many validations in a row that improved neither best_metric nor "
                             "the validation loss; 0 means off. The best weights (best metric, ties broken by the "
                             "lower loss) are restored for the final numbers.")
    best_metric: str = Field("eval_loss", description="Validation metric early stopping watches: eval_loss, "
                                                      "perplexity or a generation metric such as exact_match.")

    @field_validator("epochs", mode="before")
    @classmethod
    def _epochs_number_or_auto(cls, value: Any) -> Any:
        """One message for the two forms, instead of pydantic's one per branch of the union."""
        if value == "auto":
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or number <= 0:
            raise ValueError(f'expected a positive number of passes or "auto", got "{value}"')
        return number

    @field_validator("best_metric")
    @classmethod
    def _known_best_metric(cls, value: str) -> str:
        from tunelab.scoring.metrics import check_metric_name

        return value if value == "eval_loss" else check_metric_name(value)


class EvalConfig(Section):
    max_new_tokens: int = Field(64, ge=1, description="Tokens generated per held-out prompt.")
    batch_size: int = Field(16, ge=1, description="Rows per scoring batch (held-out loss, labels, embeddings).")
    generation_batch: int = Field(64, ge=1, description="Prompts per generation batch, within 16,384 prompt and "
                                                        "answer tokens (decoding reads every weight once per step, "
                                                        "whatever the batch).")
    max_examples: int = Field(200, ge=0, description="Held-out rows scored by generation; 0 means all.")
    generate: bool = Field(True, description="Score greedy generations (exact match, token F1).")
    metrics: list[str] | None = Field(
        None, description="Metrics to report: exact_match, token_f1, rouge_l, accuracy, macro_f1, json_valid, "
                          "json_fields, perplexity or module:function; default: the task's own.")
    baselines: list[str] | None = Field(
        None, description="Cheap alternatives measured beside zero-shot (always measured: it is the run's before): "
                          "few_shot (k random training rows in context), retrieval (the k training rows most like "
                          "each prompt), a task's own (linear_probe, dictionary); default: every one the task has.")
    few_shot_k: int = Field(3, ge=0, description="Training rows shown in context for the few-shot baselines (random "
                                                 "and retrieval); 0 skips both.")
    few_shot_tokens: int = Field(0, ge=0, description="Prompt tokens a few-shot prompt may span, demos and question "
                                                      "together (demos that do not fit are left out, the least "
                                                      "relevant first); 0: the model's context less max_new_tokens.")
    retrieval_ranker: str = Field("minilm-l6", min_length=1,
                                  description="What ranks training rows for the retrieval baseline: an encoder "
                                              "(bundled alias or local dir; its sentence embeddings) or tfidf "
                                              "(lexical, scikit-learn); an encoder not installed gives way to tfidf.")
    cost_rows: int = Field(4, ge=0, description="Held-out prompts answered one at a time, per column, to time the "
                                                "cost of an answer unbatched; 0 skips it (batched time is always "
                                                "taken).")
    train_sample: int = Field(32, ge=0, description="Train rows scored beside held-out ones to diagnose fit; 0 skips.")
    forgetting_probe: bool = Field(True, description="Measure general ability (shipped text and questions) "
                                                     "before and after.")
    forgetting_questions: int = Field(
        200, ge=0, description="Shipped general questions the probe asks (351 ship): a generation pass before and "
                               "after, 79 s each for 200 on the bundled SmolLM2 (2 CPU cores shared with other "
                               "work); 0 or false: perplexity only.")
    forgetting_perplexity_threshold: float = Field(
        0.1, gt=0, description="Flag forgetting when general-text perplexity rises by more than this share "
                               "(0.1: +10%) and its 95% interval excludes no change.")
    forgetting_accuracy_threshold: float = Field(
        0.05, gt=0, le=1, description="Flag forgetting when general-question accuracy falls by more than this "
                                      "(0.05: 5 points) and its 95% interval (McNemar) excludes no change.")
    report_examples: int = Field(10, ge=0, description="Held-out examples shown in the report.")

    @model_validator(mode="before")
    @classmethod
    def _retired_threshold(cls, data: Any) -> Any:
        if isinstance(data, dict) and "forgetting_threshold" in data:
            raise ValueError("forgetting_threshold was split in two: set forgetting_perplexity_threshold (a share, "
                             "0.1 = +10%) and forgetting_accuracy_threshold (0.05 = 5 points)")
        return data

    @field_validator("forgetting_questions", mode="before")
    @classmethod
    def _questions_on_or_off(cls, value: Any) -> Any:
        """true/false, as the key once was: the default count, or none."""
        if isinstance(value, bool):
            return cls.model_fields["forgetting_questions"].default if value else 0
        return value

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str] | None) -> list[str] | None:
        from tunelab.scoring.metrics import check_metric_name

        return None if value is None else [check_metric_name(name) for name in value]


class _RunConfig(Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9._-]+$", description="Run name, used in output_dir.")
    model: str = Field("smollm2-135m-instruct", description="A bundled alias (tunelab models) or a local HF dir.")
    task: str = Field("auto", description="Training paradigm (tunelab tasks), or auto: the task that trains on "
                                         "the data's format.")
    method: str = Field("lora", description="Fine-tuning strategy (tunelab methods).")
    data: DataConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output_dir: Path | None = Field(None, description="Run directory; default runs/<name>-<timestamp>.")
    distributed: str = Field("ddp", description="How a run launched on several processes (tunelab run --nproc N, "
                                               "torchrun, accelerate launch) spreads over them (docs/scale.md); "
                                               "the engines' own config files go into the run directory.")
    trust_remote_code: bool = Field(False, description="Allow a local model dir to run its own code.")
    allow_pickle: bool = Field(False, description="Allow a local model dir whose weights are pickle files "
                                                  "(pytorch_model.bin); read with torch's weights_only loader.")

    @field_validator("output_dir")
    @classmethod
    def _plain_path(cls, value: Path | None) -> Path | None:
        if value is not None and "\0" in str(value):
            raise ValueError("contains a NUL byte")
        return value

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        return _one_of("task", value, ["auto", *sorted(TASKS)])

    @field_validator("distributed")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        from tunelab.distributed import PRESETS

        return _one_of("distributed", value, list(PRESETS))

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        return _one_of("method", value, sorted(METHODS))

    @model_validator(mode="after")
    def _method_default_rate(self) -> _RunConfig:
        if self.train.learning_rate is None:
            self.train.learning_rate = METHODS[self.method].default_learning_rate
        return self

    @model_validator(mode="after")
    def _data_fits_task(self) -> _RunConfig:
        task = TASKS.get(self.task)
        if task is not None and self.data.format != "auto" and self.data.format not in task.formats:
            raise ValueError(f'task "{self.task}" trains on {" or ".join(task.formats)} rows, not data.format '
                             f'"{self.data.format}"')
        return self

    @model_validator(mode="after")
    def _sections_fit_owners(self) -> _RunConfig:
        check_sections(self)
        return self


def section_owners(key: str) -> list[str]:
    """Who reads a config section: "method lora", "task classify", ..."""
    return [f"method {m.name}" for m in METHODS.values() if key in m.sections] + \
           [f"task {t.name}" for t in TASKS.values() if key in t.sections]


def active_sections(config: Any) -> set[str]:
    task = TASKS.get(config.task)
    return set(METHODS[config.method].sections) | set(task.sections if task else ())


def check_sections(config: Any) -> None:
    """A section set for a method or task this run does not use is an error naming its owner; the
    run's own sections get their defaults. With task=auto, task sections wait until the task is chosen."""
    active = active_sections(config)
    for key, model in SECTIONS.items():
        value = getattr(config, key)
        if key in active:
            if value is None:
                object.__setattr__(config, key, model())
            continue
        if value is None or (config.task == "auto" and any(key in t.sections for t in TASKS.values())):
            continue
        owners = ", ".join(section_owners(key))
        raise ValueError(f'section "{key}" holds settings of {owners}; this run has method "{config.method}" '
                         f'and task "{config.task}"')


RunConfig = create_model(
    "RunConfig", __base__=_RunConfig, __doc__="The run config, with every registered method's and task's section.",
    **{key: (model | None, Field(None, description=f"Settings of {model.__name__}."))
       for key, model in sorted(SECTIONS.items())})


def _one_of(key: str, value: str, allowed: list[str]) -> str:
    if value in allowed:
        return value
    raise ValueError(f'expected one of {"|".join(allowed)}, got "{value}"{did_you_mean(value, allowed)}')


def load_config(path: str | Path | None, overrides: list[str] = (), base_dir: Path | None = None) -> RunConfig:
    """Read a YAML config (optional), apply `key=value` overrides, and validate everything."""
    return validate_config(load_raw(path, overrides))


def load_raw(path: str | Path | None, overrides: list[str] = ()) -> dict[str, Any]:
    """The settings as the user wrote them (file plus overrides), before validation fills in defaults."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
        _anchor_paths(raw, Path(path).resolve().parent)
    for item in overrides:
        _apply_override(raw, item)
    return raw


def validate_config(raw: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(explain(err, raw)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    _check_config_file(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(yaml_error(path, err)) from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top, got {type(data).__name__}")
    return data


def yaml_error(path: Path, err: Exception) -> str:
    """`FILE:LINE:COLUMN: not valid YAML: what` for a YAML syntax error (the line where the parser saw it)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if mark is None:
        return f"{path}: not valid YAML: {str(err).splitlines()[0]}"
    problem, context = getattr(err, "problem", None), getattr(err, "context", None)
    return (f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {problem or context}"
            + (f" ({context})" if problem and context else ""))


DATA_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".tsv", ".parquet")  # not .json: YAML reads a JSON config too


def _check_config_file(path: Path) -> None:
    """A config path that names a run directory or a data file gets what to do instead, not "not found"."""
    if path.is_dir():
        kept = RunDir(path).config_path
        hint = f"this run directory keeps its config as {kept}" if kept.is_file() else \
            f"a saved datasets directory goes in data.train={path}"
        raise ConfigError(f"{path}: a directory, not a YAML config file; {hint}")
    if path.suffix.lower() in DATA_SUFFIXES:
        raise ConfigError(f"{path}: a data file, not a YAML config; pass it as data.train={path} "
                          "(after the YAML config, if any)")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")


def _anchor_paths(raw: dict[str, Any], base: Path) -> None:
    """Make data paths (and files a section names) written in a YAML file relative to that file, not to the cwd."""
    for key, section in SECTIONS.items():
        if isinstance(raw.get(key), dict):
            section.anchor(raw[key], base)
    data = raw.get("data")
    if not isinstance(data, dict):
        return
    for key in ("train", "eval"):
        value = data.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            data[key] = str(base / value)


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f'override "{item}": expected key=value, e.g. train.learning_rate=1e-4')
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except (yaml.YAMLError, RecursionError):
        value = text
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f'override "{item}": "{part}" is not a section')
        node = child
    node[parts[-1]] = value


def explain(err: ValidationError, raw: dict[str, Any]) -> str:
    """Turn pydantic's report into lines that name the key, the value given and what is allowed."""
    lines = []
    for problem in err.errors():
        loc = [str(p) for p in problem["loc"]]
        key = ".".join(loc)
        if problem["type"] == "extra_forbidden":
            lines.append(f'config: unknown key "{key}"{did_you_mean(loc[-1], _known_keys(loc[:-1]))}')
            continue
        if problem["type"] == "missing":
            lines.append(f'config: "{key}" is required ({_field_help(loc)})')
            continue
        given = _lookup(raw, loc)
        msg = problem["msg"].removeprefix("Value error, ")
        if msg.startswith(f"{key}."):  # a validator that names the deeper key itself (rlhf.grader.operation: ...)
            lines.append(f"config: {msg}")
            continue
        shown = f', got "{given}"' if given is not _MISSING and "got" not in msg else ""
        lines.append(f"config: {key}: {msg}{shown}" if key else f"config: {msg}")
    return "\n".join(lines)


_MISSING = object()


def _lookup(raw: Any, loc: list[str]) -> Any:
    for part in loc:
        if not isinstance(raw, dict) or part not in raw:
            return _MISSING
        raw = raw[part]
    return raw


def _section_type(annotation: Any) -> type[BaseModel] | None:
    """The section model of a field annotated `Section` or `Section | None`."""
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _section_model(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(part)
        sub = _section_type(field.annotation) if field else None
        if sub is None:
            return None
        model = sub
    return model


def _known_keys(loc: list[str]) -> list[str]:
    model = _section_model(loc)
    return list(model.model_fields) if model else []


def _field_help(loc: list[str]) -> str:
    model = _section_model(loc[:-1])
    field = model.model_fields.get(loc[-1]) if model else None
    return (field.description or "no default") if field else "no default"


def describe_options() -> list[tuple[str, str, str]]:
    """Every option as (key, default, help), for `tunelab run --help-config` and the docs."""
    rows: list[tuple[str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str, owner: str = "") -> None:
        for name, field in model.model_fields.items():
            section = _section_type(field.annotation)
            if section is not None:
                owners = section_owners(name) if name in SECTIONS else []
                walk(section, f"{prefix}{name}.", f"[{', '.join(owners)}] " if owners else owner)
                continue
            default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
            rows.append((prefix + name, default, owner + (field.description or "")))

    walk(RunConfig, "")
    return rows


def options_markdown() -> str:
    """The README's config table, from the same source as `tunelab options`: the run's own keys one per row,
    then each method's and task's section by name (its keys: `tunelab options`)."""
    rows = [(key, default, help_text) for key, default, help_text in describe_options()
            if key.split(".")[0] not in SECTIONS]
    from tunelab.distributed import PRESETS

    choices = {"task": ["auto", *sorted(TASKS)], "method": sorted(METHODS), "distributed": list(PRESETS)}
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, help_text in rows:
        extra = f" One of: {', '.join(f'`{c}`' for c in choices[key])}." if key in choices else ""
        lines.append(f"| `{key}` | `{default}` | {help_text}{extra} |".replace("`required`", "required"))
    for key in sorted(SECTIONS):
        lines.append(f"| `{key}.*` | | settings of {', '.join(section_owners(key))} |")
    return "\n".join(lines) + "\n"


def dump_config(config: RunConfig) -> str:
    """YAML of every setting; sections of methods and tasks this run does not use are left out."""
    raw = config.model_dump(mode="json")
    unused = [key for key in SECTIONS if raw.get(key) is None]
    return yaml.safe_dump({k: v for k, v in raw.items() if k not in unused}, sort_keys=False)
