"""Evaluation tasks: the common subset of lm-evaluation-harness task YAML.

Supported keys: ``task``, ``dataset_path`` (``json``/``csv``/``parquet`` with
``dataset_kwargs.data_files``, a local file/folder, or an lmops dataset ref),
``test_split``, ``validation_split``, ``fewshot_split``, ``num_fewshot``, ``doc_to_text``,
``doc_to_choice``, ``doc_to_target`` (Jinja, a column name, or a literal), ``description``,
``target_delimiter``, ``fewshot_delimiter``, ``output_type`` (``multiple_choice``,
``generate_until``, ``loglikelihood_rolling``), ``generation_kwargs`` (``until``: the
task's ``fewshot_delimiter`` when not given, as lm-eval; ``max_gen_toks``, ``do_sample``,
``temperature``), ``fewshot_config`` (``sampler``; lm-eval's other few-shot keys are refused
with their line), ``metric_list`` (a metric's other keys are
its options, as in lm-eval: exact_match's ``ignore_case``, ``ignore_punctuation``,
``regexes_to_ignore``, and lmops' ``numeric``), ``filter_list`` (regex extraction, take-first,
lowercase, strip or ``remove_whitespace``, ``number``: the final numeric answer),
``group``/``tag``, ``gen_prefix``. Unknown keys are errors that name the line.

lm-eval's other ``TaskConfig`` keys (0.4.13, ``lm_eval/config/task.py``) are read as lm-eval
writes them when they do not change a score, and refused, naming the line and what to do,
when lmops would otherwise score the task differently from lm-eval (``_LM_EVAL_REFUSED``):
``task_alias`` (lm-eval's display name), ``should_decontaminate`` and
``doc_to_decontamination_query`` (lm-eval's evaluator never reads them; ``--contamination``
checks every item's question and answers), ``unsafe_code`` (a confirmation for tasks that run
generated code) and ``repeats: 1`` are accepted and left alone; ``process_docs``,
``process_results``, ``custom_dataset``, ``class``, ``use_prompt``, ``doc_to_image``,
``doc_to_audio``, a ``repeats`` above 1 and any ``!function`` (Python lm-eval runs from the
task's folder) are refused.

Rendering follows lm-evaluation-harness: a template that is exactly a column name yields
that column; otherwise it is Jinja. A rendered ``doc_to_choice`` or ``doc_to_target`` that is a
list (``[...]``), or a target of a task with choices that is all digits (an index), is parsed as
a Python literal; a rendered ``doc_to_text`` is the prompt's text as it is.

Prompts are built as lm-evaluation-harness 0.4 builds them (``ConfigurableTask.
fewshot_context``): a list of messages (system = system instruction + description, then a
user/assistant pair per few-shot example, then the question, and an opened assistant turn
when the task has a ``gen_prefix``), rendered either as plain text (each message followed by
its delimiter) or through the model's chat template, as separate turns
(``fewshot_as_multiturn``) or collapsed into one user turn.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from lmops.core.errors import UserError
from lmops.core.rows import read_rows
from lmops.core.yamlcfg import FieldError, load_config

__all__ = ["ChatTemplate", "Doc", "Message", "Task", "TaskConfig", "load_task_file"]

Doc = dict[str, Any]
# (messages as {"role", "content"} dicts, add_generation_prompt) -> the rendered prompt
ChatTemplate = Callable[[list[dict[str, str]], bool], str]


class MetricSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    metric: str
    aggregation: str = "mean"
    higher_is_better: bool = True


class FilterStep(BaseModel):
    model_config = ConfigDict(extra="allow")
    # remove_whitespace: lm-eval's name for strip (its TriviaQA and NQ-Open files use it)
    function: Literal["regex", "take_first", "lowercase", "strip", "remove_whitespace", "number"]
    regex_pattern: str | None = None
    group_select: int = 0
    # function number: the final numeric answer (eval.extract.extract_number's modes)
    mode: Literal["strict", "flexible", "last"] = "flexible"


_FILTERS: tuple[str, ...] = get_args(FilterStep.model_fields["function"].annotation)


class FilterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    filter: list[FilterStep]


class GenerationKwargs(BaseModel):
    model_config = ConfigDict(extra="allow")
    # None: the task's fewshot_delimiter (TaskConfig fills it in, as lm-eval does)
    until: list[str] | str | None = None
    max_gen_toks: int = 256
    do_sample: bool = False
    temperature: float = 0.0


# lm-eval task keys whose meaning is Python code, other inputs or repeated sampling: scoring
# the task without them would give other numbers than lm-eval's, silently, so they are refused
_LM_EVAL_REFUSED = {
    "process_docs": "lm-eval's Python hook that rewrites the documents; lmops runs no task "
    "code: write the processed rows to the data file (doc_filter drops rows by a field)",
    "process_results": "lm-eval's Python scoring hook; lmops runs no task code: score with "
    "metric_list (a metric's options as lm-eval's) and filter_list",
    "custom_dataset": "a Python dataset loader; lmops runs no task code: point dataset_path "
    "at the rows (a file, a folder or a dataset ref)",
    "class": "a Python task class; lmops runs no task code: describe the task in YAML keys",
    "use_prompt": "a promptsource template; write the prompt as doc_to_text",
    "doc_to_image": "an image input; lmops evaluates text only: remove it",
    "doc_to_audio": "an audio input; lmops evaluates text only: remove it",
}


# lm-eval's fewshot_config keys (its FewshotConfig) other than ``sampler``: each formats or
# picks the few-shot examples otherwise than the task's own keys, which is how lmops picks and
# formats them, so reading the task without it would give other numbers than lm-eval's
_FEWSHOT_REFUSED = {
    "split": "the split the examples come from: write it as the task's fewshot_split",
    "samples": "examples written in the task file: put them in a data file's split and name "
    "it as fewshot_split",
    "fewshot_indices": "the rows of the few-shot split to use: write those rows to a split of "
    "their own and name it as fewshot_split",
    "process_docs": "a Python hook; lmops runs no task code: write the processed rows to the "
    "data file",
    **{
        key: f"the few-shot examples' own {key}; lmops formats them with the task's {key}: "
        "remove it (or make it the task's own)"
        for key in (
            "doc_to_text",
            "doc_to_choice",
            "doc_to_target",
            "gen_prefix",
            "fewshot_delimiter",
            "target_delimiter",
        )
    },
}


class TaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str
    group: str | list[str] | None = None
    tag: str | list[str] | None = None
    dataset_path: str
    dataset_name: str | None = None
    dataset_kwargs: dict[str, Any] = Field(default_factory=dict)
    test_split: str | None = None
    validation_split: str | None = None
    training_split: str | None = None
    fewshot_split: str | None = None
    num_fewshot: int = 0
    # {sampler: first_n | random}; lm-eval's other keys are refused (_FEWSHOT_REFUSED)
    fewshot_config: dict[str, Any] = Field(default_factory=dict)
    description: str = ""
    doc_to_text: str
    doc_to_choice: str | list[str] | None = None
    doc_to_target: str | int
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    output_type: Literal["multiple_choice", "generate_until", "loglikelihood_rolling"] = (
        "multiple_choice"
    )
    generation_kwargs: GenerationKwargs = Field(default_factory=GenerationKwargs)
    metric_list: list[MetricSpec] = Field(default_factory=list)
    filter_list: list[FilterSpec] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    # opens the answer (a column, Jinja, or text): the assistant turn starts with it
    gen_prefix: str | None = None
    # lm-eval's keys that change no score, read and left alone: a display name; its
    # decontamination query, which its evaluator never reads (lmops' --contamination checks
    # every item's question and answers); the consent gate of tasks that run generated code;
    # one generation per document (the only count lmops runs)
    task_alias: str | None = None
    should_decontaminate: bool = False
    doc_to_decontamination_query: str | None = None
    unsafe_code: bool = False
    repeats: int = 1
    # lmops extensions
    doc_filter: dict[str, Any] = Field(default_factory=dict)  # {field: allowed value(s)}
    scorer: Literal["loglikelihood", "letter"] = "loglikelihood"
    # tool use (eval/tools.py): OpenAI tool objects, listed in the system turn; the tool_*
    # metrics get them as their ``tools`` option
    tools: list[dict[str, Any]] | None = None

    @model_validator(mode="before")
    @classmethod
    def _refused_lm_eval_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, why in _LM_EVAL_REFUSED.items():
                if data.get(key) is not None:
                    raise FieldError((key,), why)
            fewshot = data.get("fewshot_config")
            for key in fewshot if isinstance(fewshot, dict) else ():
                if key == "sampler":
                    continue
                why = _FEWSHOT_REFUSED.get(key, "unknown field (fewshot_config takes sampler)")
                raise FieldError(("fewshot_config", key), why)
        return data

    @model_validator(mode="after")
    def _until_the_fewshot_delimiter(self) -> TaskConfig:
        """A generation stops at the task's ``fewshot_delimiter`` unless ``until`` says
        otherwise, as lm-eval's ``TaskConfig`` sets it (with or without generation_kwargs)."""
        if self.generation_kwargs.until is None:
            self.generation_kwargs.until = [self.fewshot_delimiter]
        return self

    @field_validator("repeats")
    @classmethod
    def _one_repeat(cls, n: int) -> int:
        if n != 1:
            raise ValueError(
                f"lmops generates once per document; lm-eval's {n} repeats (for majority_vote "
                "or take_first_k) would be scored as one: set repeats: 1 or remove it"
            )
        return n

    @field_validator("metric_list")
    @classmethod
    def _known_metrics(cls, specs: list[MetricSpec], info: ValidationInfo) -> list[MetricSpec]:
        """A generation task's metrics score its outputs: an unknown one (or option) fails
        when the file is read, with its line. Log-likelihood tasks score acc and acc_norm
        whatever the file lists, as lm-eval's own metric_list there is informative."""
        if info.data.get("output_type") != "generate_until":
            return specs
        from lmops.eval.metrics import metric_problem

        for i, spec in enumerate(specs):
            problem = metric_problem(spec.metric, (spec.model_extra or {}).keys())
            if problem is not None:
                raise ValueError(f"[{i}]: {problem}")
        return specs

    def template_hash(self) -> str:
        """sha256 of everything that shapes a prompt, so reports say which template scored."""
        parts = {
            k: getattr(self, k)
            for k in (
                "description",
                "doc_to_text",
                "doc_to_choice",
                "doc_to_target",
                "target_delimiter",
                "fewshot_delimiter",
            )
        }
        if self.gen_prefix is not None:  # only when set, so older reports keep their hash
            parts["gen_prefix"] = self.gen_prefix
        if self.tools is not None:
            parts["tools"] = self.tools
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]


def _jinja() -> Any:
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    # lm-eval's helpers used in common task files
    env.filters["regex_replace"] = lambda s, find, repl: __import__("re").sub(find, repl, s)
    return env


_ENV: Any = None
_COMPILED: dict[str, Any] = {}  # template source -> compiled Jinja template


def render_text(template: str, doc: Doc, field_name: str = "template") -> str:
    """A column's value when ``template`` names one, else the rendered Jinja text (lm-eval's
    ``resolve_field``: descriptions and ``gen_prefix``)."""
    global _ENV
    if template in doc:
        return str(doc[template])
    if "{" not in template:  # plain text: nothing to render
        return template
    compiled = _COMPILED.get(template)
    if compiled is None:
        if _ENV is None:
            _ENV = _jinja()
        try:
            compiled = _COMPILED.setdefault(template, _ENV.from_string(template))
        except Exception as e:  # jinja2 syntax errors
            raise UserError(f"{field_name}: cannot render {template!r}: {e}") from None
    try:
        return str(compiled.render(**doc))
    except Exception as e:  # jinja2 errors: undefined column
        raise UserError(f"{field_name}: cannot render {template!r}: {e}") from None


def render(
    template: str | int | list[Any], doc: Doc, field_name: str = "template", *, digits: bool = False
) -> Any:
    """A ``doc_to_choice`` or ``doc_to_target`` as lm-evaluation-harness applies it: a
    column's value as it is; else the rendered Jinja text, parsed as a Python literal when
    it is a list (``[...]``: choices, or a generation's several targets) or, with
    ``digits`` (the target of a task with choices: its answer's index), all digits.
    ``doc_to_text`` never comes here: its rendering is a prompt, kept as written (a
    question that reads ``[3,1,2]`` or ``12\\n`` is not reformatted as ``[3, 1, 2]`` or
    ``12``), as lm-eval keeps it where its text is not a choice's index."""
    if isinstance(template, int | list):
        return template
    if template in doc:
        return doc[template]
    out = render_text(template, doc, field_name)
    stripped = out.strip()
    if (stripped.startswith("[") and stripped.endswith("]")) or (digits and stripped.isdigit()):
        try:
            return ast.literal_eval(stripped)
        except (ValueError, SyntaxError):
            return out
    return out


def _answer(value: Any) -> str:
    """One answer as the metrics read it: text as it is; an object or a list (an expected
    tool call) as JSON, what the tool-use metrics parse, not Python's repr."""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _read_rows(path: Path, fmt: str) -> list[Doc]:
    if not path.exists():
        raise UserError(f"{path}: data file not found")
    # The one row reader: JSON Lines or a JSON array (by content), CSV, Parquet.
    return [
        r.values
        for r in read_rows(
            [path], "csv" if fmt == "csv" else "parquet" if fmt == "parquet" else "json"
        )
    ]


@dataclass
class Message:
    """One turn of a prompt. As plain text it is ``content + delimiter``; through a chat
    template only role and content count (lm-eval's ``api.utils.Message``)."""

    role: str  # system | user | assistant
    content: str
    delimiter: str = ""

    def text(self) -> str:
        return self.content + self.delimiter

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def _maybe_delimit(prefix: str | None, suffix: str | None, delimiter: str = " ") -> str:
    """prefix + suffix, with ``delimiter`` between unless either has whitespace there."""
    if not prefix:
        return suffix or ""
    if not suffix:
        return prefix
    if prefix[-1].isspace() or suffix[0].isspace():
        return prefix + suffix
    return prefix + delimiter + suffix


def _requires_delimiter(prefix: str, suffix: str) -> bool:
    return prefix != "" and not (prefix[-1].isspace() or suffix[0].isspace())


def _qa_turn(
    q: str, a: str | None, gen_prefix: str | None, target_delim: str, fewshot_delim: str
) -> list[Message]:
    """The question as a user turn, then the answer (a few-shot example) or the opened
    answer (``gen_prefix``) as an assistant turn: lm-eval's ``build_qa_turn``."""
    has_answer = a is not None and a != ""
    # the target delimiter follows the question before an answer; before a gen_prefix only
    # when neither side has whitespace at the join
    opened = bool(gen_prefix) and _requires_delimiter(q, gen_prefix or "")
    user_delim = target_delim if (has_answer and not gen_prefix) or opened else ""
    turn = [Message("user", q, user_delim)]
    if has_answer:
        turn.append(Message("assistant", _maybe_delimit(gen_prefix, a, " "), fewshot_delim))
    elif gen_prefix:
        turn.append(Message("assistant", gen_prefix))
    return turn


def _single_turn(messages: list[Message]) -> list[dict[str, str]]:
    """Few-shot turns collapsed into one user turn (their plain text), keeping the system
    turn and an opened assistant turn: lm-eval's ``multiturn_to_singleturn``."""
    system = messages[0] if messages[0].role == "system" else None
    rest = messages[1:] if system else messages
    tail = [rest[-1]] if rest[-1].role == "assistant" else []
    body = rest[:-1] if tail else rest
    text = "".join(m.text() for m in body[:-1]) + body[-1].content  # no delimiter at the end
    out = [Message("user", text).as_dict()] + [m.as_dict() for m in tail]
    return [system.as_dict(), *out] if system else out


def render_prompt(
    messages: list[Message],
    chat_template: ChatTemplate | None = None,
    *,
    fewshot_as_multiturn: bool = False,
) -> str:
    """Plain text (every message followed by its delimiter), or the chat template's
    rendering. A prompt that ends in an opened assistant turn (a ``gen_prefix``) continues
    that turn instead of adding a generation prompt."""
    if chat_template is None:
        return "".join(m.text() for m in messages)
    turns = [m.as_dict() for m in messages] if fewshot_as_multiturn else _single_turn(messages)
    return chat_template(turns, messages[-1].role != "assistant")


@dataclass
class Task:
    """A loaded task: its config, its docs per split, and where they came from."""

    config: TaskConfig
    splits: dict[str, list[Doc]]
    dataset_refs: list[str] = field(default_factory=list)
    source: str = ""
    excluded: int = 0  # docs removed by doc_filter (e.g. MMLU-Redux rows with errors)
    # A built-in task may render its own prompts (few-shot from a fixed dev split, etc.).
    custom_fewshot: Callable[[Doc], list[Doc]] | None = None
    # the local files and folders it was read from, with their roles ("task_file",
    # "dataset"): recorded as external references in the lineage of its report
    local_inputs: list[tuple[Path, str]] = field(default_factory=list)
    # registered prompt versions it renders (doc_to_text: "prompt:NAME@LABEL"), name:N
    prompt_refs: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.config.task

    @property
    def eval_docs(self) -> list[Doc]:
        c = self.config
        split = c.test_split or c.validation_split
        if split is None or split not in self.splits:
            raise UserError(
                f"task {c.task}: split {split!r} not found; available: {', '.join(self.splits)}"
            )
        return self.splits[split]

    def fewshot_docs(self) -> list[Doc]:
        c = self.config
        split = c.fewshot_split or c.training_split or c.validation_split
        if c.num_fewshot and (split is None or split not in self.splits):
            raise UserError(f"task {c.task}: num_fewshot {c.num_fewshot} needs a fewshot_split")
        return self.splits.get(split or "", [])

    # -- rendering -------------------------------------------------------------------------------
    def text(self, doc: Doc) -> str:
        return render_text(self.config.doc_to_text, doc, "doc_to_text")

    def choices(self, doc: Doc) -> list[str]:
        c = self.config
        if c.doc_to_choice is None:
            raise UserError(f"task {c.task}: output_type multiple_choice needs doc_to_choice")
        out = render(c.doc_to_choice, doc, "doc_to_choice")
        if not isinstance(out, list):
            raise UserError(f"task {c.task}: doc_to_choice rendered {out!r}, not a list")
        return [str(x) for x in out]

    def target(self, doc: Doc) -> Any:
        c = self.config
        t = render(c.doc_to_target, doc, "doc_to_target", digits=c.doc_to_choice is not None)
        if c.output_type == "multiple_choice":
            if isinstance(t, str) and not t.lstrip("-").isdigit():
                choices = self.choices(doc)
                if t not in choices:
                    raise UserError(
                        f"task {self.name}: target {t!r} is not one of the choices {choices}"
                    )
                return choices.index(t)
            return int(t)
        return t

    def golds(self, doc: Doc) -> list[str]:
        """Every answer ``doc`` accepts, as text (``answers``); none when its list is empty."""
        return self.answers(doc)[0]

    def answers(self, doc: Doc) -> tuple[list[str], bool]:
        """Every answer ``doc`` accepts, as text, and whether the task gave them as a list.

        The answers: the target choice's (multiple choice, and a generation task with
        choices whose target is an index, as lm-eval reads it), each of several targets (a
        ``doc_to_target`` that renders a list, as TriviaQA's aliases; an empty one, as SQuAD
        v2's unanswerable questions, is none), else the one target. An answer that is not
        text (an expected tool call) is its JSON. A generation is scored against each and
        keeps its best score. The report keeps a list of one as a list, as lm-eval's
        samples do."""
        c = self.config
        t = self.target(doc)
        if c.output_type == "multiple_choice":
            return [self.choices(doc)[t]], False
        if isinstance(t, list):
            return [_answer(x) for x in t], True
        if c.doc_to_choice is not None and isinstance(t, int) and not isinstance(t, bool):
            choices = self.choices(doc)
            if not 0 <= t < len(choices):
                raise UserError(
                    f"doc_to_target {t} is not an index of the {len(choices)} choices {choices}"
                )
            return [choices[t]], False
        return [_answer(t)], False

    def answer_text(self, doc: Doc) -> str:
        """A few-shot example's answer: the target choice's text (multiple choice), the first
        of several targets, or the target."""
        golds = self.golds(doc)
        if not golds:
            raise UserError(
                "doc_to_target rendered an empty list: a few-shot example needs an answer "
                "(leave such documents out of the few-shot split)"
            )
        return golds[0]

    def gen_prefix(self, doc: Doc) -> str | None:
        g = self.config.gen_prefix
        return None if g is None else render_text(g, doc, "gen_prefix")

    def shots(self, doc: Doc, num_fewshot: int, rng_seed: int = 1234) -> list[Doc]:
        """The few-shot examples for ``doc``: the first ``num_fewshot`` of the few-shot split
        (or a seeded random draw with ``fewshot_config.sampler: random``). When
        ``fewshot_split`` equals ``test_split``, copies of ``doc`` are left out, as lm-eval
        does."""
        if not num_fewshot:
            return []
        if self.custom_fewshot is not None:
            return self.custom_fewshot(doc)[:num_fewshot]
        c = self.config
        pool = self.fewshot_docs()
        if c.fewshot_split == c.test_split:  # lm-eval's test, None == None included
            pool = [d for d in pool if d != doc]
        if len(pool) < num_fewshot:  # never fewer examples than asked, silently
            split = c.fewshot_split or c.training_split or c.validation_split
            raise UserError(
                f"task {c.task}: {num_fewshot}-shot needs {num_fewshot} few-shot examples; "
                + (
                    f"split {split!r} has {len(pool)}"
                    if split
                    else "set fewshot_split (or training_split) in the task file"
                )
            )
        if c.fewshot_config.get("sampler", "first_n") == "random":
            import random

            return random.Random(rng_seed).sample(pool, num_fewshot)
        return pool[:num_fewshot]

    def messages(
        self, doc: Doc, num_fewshot: int, *, system_instruction: str | None = None
    ) -> list[Message]:
        """The prompt's turns for ``doc``: lm-eval's ``fewshot_context`` before rendering."""
        c = self.config
        out: list[Message] = []
        description = render_text(c.description, doc, "description") if c.description else ""
        if c.tools:  # the tool instructions a template without tools support gets
            from lmops.models.toolformat import system_prompt

            description = _maybe_delimit(description, system_prompt(c.tools), c.fewshot_delimiter)
        system = _maybe_delimit(system_instruction, description, c.fewshot_delimiter)
        if system:
            out.append(Message("system", system))
        for shot in self.shots(doc, num_fewshot):
            out += _qa_turn(
                self.text(shot),
                self.answer_text(shot),
                self.gen_prefix(shot),
                c.target_delimiter,
                c.fewshot_delimiter,
            )
        out += _qa_turn(self.text(doc), None, self.gen_prefix(doc), c.target_delimiter, "")
        return out

    def context(
        self,
        doc: Doc,
        num_fewshot: int,
        *,
        system_instruction: str | None = None,
        chat_template: ChatTemplate | None = None,
        fewshot_as_multiturn: bool = False,
    ) -> str:
        """Description + few-shot examples + the question, as lm-eval builds it: plain text,
        or through ``chat_template`` (few-shot examples as turns with
        ``fewshot_as_multiturn``, else in one user turn)."""
        return render_prompt(
            self.messages(doc, num_fewshot, system_instruction=system_instruction),
            chat_template,
            fewshot_as_multiturn=fewshot_as_multiturn,
        )

    def choice_delimiter(self, chat: bool) -> str:
        """What goes between the context and each choice. Through a chat template the
        answer starts its own turn, so none, unless a ``gen_prefix`` that does not end in
        whitespace opened it (lm-eval's ``construct_requests``)."""
        c = self.config
        if not chat:
            return c.target_delimiter
        g = c.gen_prefix
        return c.target_delimiter if g and not g[-1].isspace() else ""


def _task_code(text: str) -> tuple[int, str, str] | None:
    """The first ``!function`` tag of a task file's text, as (line, the key it is the value
    of, the Python name it names), read by YAML's own scanner: a tag in a flow mapping
    (``[{function: !function utils.f}]``) or after a quoted key is one, and words in a block
    scalar or a quoted string (a prompt that reads "!function") are not. None when there is
    none, or when the text stops being YAML before one (``load_config`` names that)."""
    import yaml

    key, tagged = "", None
    previous: Any = None
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if tagged is not None:  # the name the tag applies to
                name = token.value if isinstance(token, yaml.ScalarToken) else "..."
                return tagged[0], tagged[1], name
            if isinstance(token, yaml.ScalarToken) and isinstance(previous, yaml.KeyToken):
                key = token.value
            elif isinstance(token, yaml.TagToken) and token.value == ("!", "function"):
                tagged = (token.start_mark.line + 1, key)
            previous = token
    except yaml.YAMLError:
        pass
    return None if tagged is None else (tagged[0], tagged[1], "...")


def _refuse_task_code(path: Path) -> None:
    """lm-eval's ``key: !function module.name`` runs Python from the task's folder; YAML
    cannot read it, so it is named here, with its line and what to write instead."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return  # load_config names the problem
    found = _task_code(text)
    if found is None:
        return
    n, key, fn = found
    if key in _LM_EVAL_REFUSED:
        todo = _LM_EVAL_REFUSED[key].split("; ", 1)[-1]
    elif key.startswith("doc_to_"):
        todo = "write it as a Jinja template or a column name, as lm-eval reads those too"
    elif key in ("metric", "aggregation"):
        from lmops.eval.metrics import METRICS

        todo = f"name one of lmops' metrics ({', '.join(sorted(METRICS))})"
    elif key == "function":  # a filter_list step
        todo = f"name one of lmops' filters ({', '.join(_FILTERS)})"
    else:
        todo = "write the value itself (the README's Evaluate section lists the keys)"
    raise UserError(
        f"{path}:{n}: {key}: !function {fn} is Python that lm-eval runs from the task's "
        f"folder; lmops runs no task code: {todo}"
    )


def load_task_file(path: Path, store: Any | None = None) -> Task:
    """Load an lm-eval-style task YAML with its data."""
    _refuse_task_code(path)
    cfg = load_config(path, TaskConfig)
    task = load_task(cfg, base=path.parent, store=store, source=str(path))
    task.local_inputs.insert(0, (path, "task_file"))
    return task


def registered_prompt(cfg: TaskConfig, store: Any | None, source: str) -> tuple[TaskConfig, str]:
    """``doc_to_text: "prompt:NAME@LABEL"`` (or ``prompt:NAME:N``): the registered text
    prompt's template becomes the task's ``doc_to_text`` (its ``{{var}}`` variables read
    the doc's fields, as Jinja does) and ``metadata.prompt`` names the version. Read through
    the store (the version's ``prompt.yaml``), so eval never imports the prompts stage."""
    import yaml

    ref = cfg.doc_to_text.removeprefix("prompt:").strip()
    if store is None:
        raise UserError(f"{source}: doc_to_text {cfg.doc_to_text!r} needs the lmops store")
    v = store.assets.resolve(ref)
    if v.kind != "prompt":
        raise UserError(f"{source}: doc_to_text: {ref} is a {v.kind}, not a prompt")
    spec = yaml.safe_load((store.assets.path(v.ref)).read_text(encoding="utf-8"))
    if not isinstance(spec.get("template"), str):
        raise UserError(
            f"{source}: doc_to_text: {v.ref} is a chat prompt; a task's doc_to_text takes a "
            "text prompt"
        )
    update = {"doc_to_text": spec["template"], "metadata": {**cfg.metadata, "prompt": v.ref}}
    return cfg.model_copy(update=update), str(v.ref)


def load_task(cfg: TaskConfig, *, base: Path, store: Any | None, source: str = "") -> Task:
    refs: list[str] = []
    prompt_refs: list[str] = []
    if cfg.doc_to_text.startswith("prompt:"):
        cfg, prompt_ref = registered_prompt(cfg, store, source)
        prompt_refs.append(prompt_ref)
    local: list[tuple[Path, str]] = []
    splits: dict[str, list[Doc]] = {}
    kind = cfg.dataset_path
    if kind in ("json", "csv", "parquet"):
        files = cfg.dataset_kwargs.get("data_files")
        if not files:
            raise UserError(f"{source}: dataset_path {kind} needs dataset_kwargs.data_files")
        if isinstance(files, str):
            files = {"train": files}
        for split, f in files.items():
            paths = f if isinstance(f, list) else [f]
            rows: list[Doc] = []
            for one in paths:
                p = Path(one).expanduser()
                p = p if p.is_absolute() else base / p
                rows += _read_rows(p, "json" if kind == "json" else kind)
                local.append((p, "dataset"))
            splits[split] = rows
    else:
        p = Path(kind).expanduser()
        p = p if p.is_absolute() else base / p
        if not p.exists():
            if store is None:
                raise UserError(
                    f"{source}: dataset_path {kind!r} is not a file, a known format or a dataset ref"
                )
            v = store.assets.resolve(kind)
            refs.append(v.ref)
            p = store.assets.path(v.ref)
        else:
            local.append((p, "dataset"))
        files_in = sorted(p.glob("*")) if p.is_dir() else [p]
        for f in files_in:
            if f.is_file() and not f.name.startswith(("_", ".")):
                fmt = (
                    "csv" if f.suffix == ".csv" else "parquet" if f.suffix == ".parquet" else "json"
                )
                splits.setdefault(
                    f.stem.split("-")[0] if p.is_dir() else (cfg.test_split or "test"), []
                ).extend(_read_rows(f, fmt))
    if cfg.tools is not None:
        from lmops.eval.tools import TOOL_METRICS

        metrics = [
            MetricSpec.model_validate({**m.model_dump(), "tools": cfg.tools})
            if m.metric in TOOL_METRICS
            else m
            for m in cfg.metric_list
        ]
        cfg = cfg.model_copy(update={"metric_list": metrics})
    task = Task(cfg, splits, refs, source, local_inputs=local, prompt_refs=prompt_refs)
    if cfg.doc_filter:
        task.excluded = _apply_doc_filter(task)
    _check_templates(task, source)
    return task


def _apply_doc_filter(task: Task) -> int:
    removed = 0
    for split, docs in task.splits.items():
        kept = []
        for d in docs:
            ok = all(
                (
                    str(d.get(k, "")).lower()
                    in {str(x).lower() for x in (v if isinstance(v, list) else [v])}
                )
                for k, v in task.config.doc_filter.items()
            )
            if ok:
                kept.append(d)
        removed += len(docs) - len(kept)
        task.splits[split] = kept
    return removed


def _check_templates(task: Task, source: str) -> None:
    """Render the first document now, so a broken template or a missing column fails before
    any model loads, naming the field."""
    docs = task.eval_docs
    if not docs:
        raise UserError(f"{source or task.name}: the evaluation split is empty")
    doc = docs[0]
    try:
        task.text(doc)
        task.target(doc)
        if task.config.output_type == "multiple_choice":
            task.choices(doc)
        else:  # a generation's answers: an index past the choices
            task.golds(doc)
    except UserError as e:
        raise UserError(f"{source or task.name}: {e} (columns: {', '.join(doc)})") from None
