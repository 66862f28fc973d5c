"""lmops scores multiple choice exactly as lm-evaluation-harness does: same per-item
choices, same acc and acc_norm, on a tiny random model and choices of different lengths.
Skipped when lm-eval is not installed (it is in the dev extra)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmops.eval.lm import HFEvalModel
from lmops.eval.run import evaluate
from lmops.eval.tasks import load_task_file
from tests.train.tiny import make_model, make_tokenizer

lm_eval = pytest.importorskip(
    "lm_eval", reason="lm-evaluation-harness not installed (pip install 'lmops[dev]')"
)

DOCS = [
    {
        "q": "The capital of France is",
        "options": ["Paris", "a small village in the mountains", "Rome", "blue"],
        "label": 0,
    },
    {"q": "2 + 2 =", "options": ["4", "five hundred", "22", "four or maybe three"], "label": 0},
    {"q": "今天天气", "options": ["很好", "不好不坏，适合出门", "下雨", "晴"], "label": 1},
    {
        "q": "Water boils at",
        "options": ["100 degrees Celsius at sea level", "0", "hot", "cold water"],
        "label": 0,
    },
    {
        "q": "The quick brown fox",
        "options": ["jumps", "sleeps all day long", "runs", "is a dog"],
        "label": 0,
    },
    {
        "q": "Machine learning needs",
        "options": ["data", "nothing at all", "clean data and compute", "luck"],
        "label": 2,
    },
] * 3

TASK = """\
task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{q}}}}\\nAnswer:"
doc_to_choice: "{{{{options}}}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def test_same_choices_and_scores_as_lm_eval(tmp_path: Path) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    data = tmp_path / "docs.jsonl"
    data.write_text(
        "\n".join(json.dumps(d, ensure_ascii=False) for d in DOCS) + "\n", encoding="utf-8"
    )
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    (task_dir / "tiny_mc.yaml").write_text(TASK.format(data=data), encoding="utf-8")
    model_dir = make_model(tmp_path / "model", make_tokenizer(tmp_path / "tok"), seed=3)

    ours = evaluate(
        HFEvalModel(model_dir, device="cpu", batch_size=4),
        [load_task_file(task_dir / "tiny_mc.yaml")],
        progress=False,
    )[0]
    theirs = simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},dtype=float32",
        tasks=["tiny_mc"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        batch_size=4,
        device="cpu",
        log_samples=True,
    )
    assert theirs is not None
    res = theirs["results"]["tiny_mc"]
    samples = sorted(theirs["samples"]["tiny_mc"], key=lambda s: s["doc_id"])
    their_ll = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    our_ll = [item["loglikelihoods"] for item in ours.items]
    for a, b in zip(our_ll, their_ll, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    assert [i["pred"] for i in ours.items] == [
        max(range(len(ll)), key=ll.__getitem__) for ll in their_ll
    ]
    assert ours.metrics["acc"] == pytest.approx(res["acc,none"])
    assert ours.metrics["acc_norm"] == pytest.approx(res["acc_norm,none"])
    assert ours.metrics["acc_stderr"] == pytest.approx(res["acc_stderr,none"])


# -- instruct models: --apply-chat-template, --system-instruction, --fewshot-as-multiturn ---------
# A ChatML tokenizer whose end of sequence is <|im_end|> (as Qwen's instruct models), a
# random tiny Llama, and the same task files run through lm-eval's HF backend and lmops with
# the same flags: the same prompt strings, log-likelihoods and generations per document.
SHOTS = [
    {"q": "The sun rises in the", "options": ["east", "west", "north", "south"], "label": 0},
    {"q": "Ice is", "options": ["hot", "cold water", "frozen water", "steam"], "label": 2},
    {"q": "Cats say", "options": ["woof", "meow", "moo", "quack"], "label": 1},
]
GEN_DOCS = [
    {"country": "France", "capital": "Paris"},
    {"country": "Japan", "capital": "Tokyo"},
    {"country": "中国", "capital": "北京"},
    {"country": "Italy", "capital": "Rome"},
    {"country": "Egypt", "capital": "Cairo"},
]

CHAT_MC = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
    train: {shots}
test_split: test
fewshot_split: train
fewshot_config:
  sampler: first_n
num_fewshot: 2
output_type: multiple_choice
description: "Answer the question.\\n\\n"
doc_to_text: "Question: {{{{q}}}}"
doc_to_choice: "{{{{options}}}}"
doc_to_target: label
{extra}metric_list:
  - metric: acc
"""

CHAT_GEN = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
    train: {data}
test_split: test
fewshot_split: train
fewshot_config:
  sampler: first_n
num_fewshot: 2
output_type: generate_until
doc_to_text: "What is the capital of {{{{country}}}}?"
doc_to_target: "{{{{capital}}}}"
{extra}generation_kwargs:
  until: ["\\n\\n", "Question"]
  max_gen_toks: 12
  do_sample: false
metric_list:
  - metric: exact_match
"""


def _untied_model(folder: Path, tokenizer_dir: Path, seed: int) -> Path:
    """tiny.make_model's Llama with untied output weights and a wider initialisation: a
    tied random model greedily repeats its last input token, which makes generation
    parity trivial (it would stop at once after a chat template's newline)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        initializer_range=0.2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def chat_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from lmops.data.tokenizer import train_tokenizer
    from tests.train.tiny import SENTENCES

    root = tmp_path_factory.mktemp("chat")
    tok = root / "tok"
    train_tokenizer(SENTENCES, tok, vocab_size=320, min_frequency=1, eos_token="<|im_end|>")
    model_dir = _untied_model(root / "model", tok, seed=5)

    def jsonl(name: str, rows: list[dict[str, object]]) -> Path:
        f = root / name
        f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", "utf-8")
        return f

    data, shots, gen = (
        jsonl("mc.jsonl", DOCS[:8]),
        jsonl("shots.jsonl", SHOTS),
        jsonl("gen.jsonl", GEN_DOCS),
    )
    tasks = root / "tasks"
    tasks.mkdir()
    for name, extra in (("chat_mc", ""), ("chat_mc_prefix", 'gen_prefix: "Answer:"\n')):
        (tasks / f"{name}.yaml").write_text(
            CHAT_MC.format(name=name, data=data, shots=shots, extra=extra), encoding="utf-8"
        )
    for name, extra in (("chat_gen", ""), ("chat_gen_prefix", 'gen_prefix: "The capital is"\n')):
        (tasks / f"{name}.yaml").write_text(
            CHAT_GEN.format(name=name, data=gen, extra=extra), encoding="utf-8"
        )
    return {
        "tasks": tasks,
        "ours": HFEvalModel(model_dir, device="cpu", batch_size=4),
        # batch size 1: lm-eval pads generation batches on the left, lmops generates alone
        "theirs": HFLM(pretrained=str(model_dir), dtype="float32", batch_size=1, device="cpu"),
        "manager": TaskManager(include_path=str(tasks), include_defaults=False),
    }


def _both(
    setup: dict[str, object], name: str, **flags: object
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """(lmops items, lm-eval samples in document order) for one task and one set of flags."""
    from lm_eval import simple_evaluate

    ours = evaluate(
        setup["ours"],  # type: ignore[arg-type]
        [load_task_file(setup["tasks"] / f"{name}.yaml")],  # type: ignore[operator]
        progress=False,
        **flags,  # type: ignore[arg-type]
    )[0]
    theirs = simple_evaluate(
        model=setup["theirs"],
        tasks=[name],
        task_manager=setup["manager"],
        log_samples=True,
        apply_chat_template=bool(flags.get("apply_chat_template")),
        system_instruction=flags.get("system_instruction"),  # type: ignore[arg-type]
        fewshot_as_multiturn=flags.get("fewshot_as_multiturn", True),  # type: ignore[arg-type]
    )
    assert theirs is not None
    return ours.items, sorted(theirs["samples"][name], key=lambda s: s["doc_id"])


CHAT_FLAGS = [
    pytest.param(
        {"apply_chat_template": True, "system_instruction": "You are a careful assistant."},
        id="chat-multiturn-system",
    ),
    pytest.param({"apply_chat_template": True, "fewshot_as_multiturn": False}, id="chat-1turn"),
    pytest.param({"system_instruction": "Think first."}, id="plain-system"),
]


@pytest.mark.parametrize("task", ["chat_mc", "chat_mc_prefix"])
@pytest.mark.parametrize("flags", CHAT_FLAGS)
def test_chat_template_multiple_choice_matches_lm_eval(
    chat_setup: dict[str, object], task: str, flags: dict[str, object]
) -> None:
    ours, theirs = _both(chat_setup, task, **flags)
    assert len(ours) == len(theirs) == 8
    for item, sample in zip(ours, theirs, strict=True):
        contexts = {arg[0] for arg in sample["arguments"]}
        assert contexts == {item["context"]}  # the very same prompt string
        their_ll = [float(r[0]) for r in sample["filtered_resps"]]
        assert item["loglikelihoods"] == pytest.approx(their_ll, abs=1e-4)
        assert item["pred"] == max(range(len(their_ll)), key=their_ll.__getitem__)
    if flags.get("apply_chat_template"):
        first = ours[0]["context"]
        assert first.endswith("<|im_start|>assistant\n" + ("Answer:" if "prefix" in task else ""))
        # the system turn: the instruction (when given), then the task's description
        system = first.split("<|im_end|>")[0]
        assert system.endswith("Answer the question.\n\n")
        assert system.startswith("<|im_start|>system\n" + str(flags.get("system_instruction", "")))
        turns = first.count("<|im_start|>user")
        assert turns == (3 if flags.get("fewshot_as_multiturn", True) else 1)


@pytest.mark.parametrize("task", ["chat_gen", "chat_gen_prefix"])
@pytest.mark.parametrize("flags", CHAT_FLAGS[:2])
def test_chat_template_generation_matches_lm_eval(
    chat_setup: dict[str, object], task: str, flags: dict[str, object]
) -> None:
    ours, theirs = _both(chat_setup, task, **flags)
    assert [i["context"] for i in ours] == [s["arguments"][0][0] for s in theirs]
    assert [i["output"] for i in ours] == [s["resps"][0][0] for s in theirs]
    assert all(i["output"] for i in ours)  # something was generated for every document


def test_a_bos_adding_tokenizer_scores_as_lm_eval(tmp_path: Path) -> None:
    """lm-eval 0.4 tokenizes with the tokenizer's own special tokens: a tokenizer that adds
    a BOS (Llama's) gets it in front of every context, and lmops does the same."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tok_dir = make_tokenizer(tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.bos_token_id)]
    )
    tok.save_pretrained(str(tok_dir))
    model_dir = make_model(tmp_path / "model", tok_dir, seed=4)
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in DOCS[:6]), "utf-8")
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    (task_dir / "tiny_mc.yaml").write_text(TASK.format(data=data), encoding="utf-8")
    ours = HFEvalModel(model_dir, device="cpu", batch_size=4)
    assert ours._tok("Hello")[0] == ours.prefix_id  # the BOS is there
    mine = evaluate(ours, [load_task_file(task_dir / "tiny_mc.yaml")], progress=False)[0]
    theirs = simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},dtype=float32",
        tasks=["tiny_mc"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        batch_size=4,
        device="cpu",
        log_samples=True,
    )
    assert theirs is not None
    samples = sorted(theirs["samples"]["tiny_mc"], key=lambda s: s["doc_id"])
    for item, s in zip(mine.items, samples, strict=True):
        assert item["loglikelihoods"] == pytest.approx(
            [float(r[0]) for r in s["filtered_resps"]], abs=1e-4
        )


def test_cmmlu_prompts_name_subjects_in_chinese_as_lm_eval(shared_datasets: Path) -> None:
    """The built-in CMMLU prompt names each subject as lm-eval's cmmlu task files do
    (以下是关于农学的..., not ...关于agronomy的...), from lmops' own table."""
    import yaml

    from lmops.eval.builtin import load_builtin

    folder = Path(lm_eval.__file__).parent / "tasks" / "cmmlu"
    theirs = {}
    for f in folder.glob("cmmlu_*.yaml"):
        y = yaml.safe_load(f.read_text(encoding="utf-8"))
        theirs[y["dataset_name"]] = y["description"]
    default = yaml.safe_load((folder / "_default_template_yaml").read_text(encoding="utf-8"))
    tasks = load_builtin("cmmlu", root=shared_datasets)
    assert len(tasks) == len(theirs) == 67
    assert {t.name.removeprefix("cmmlu_"): t.config.description for t in tasks} == theirs
    c = tasks[0].config
    assert (c.doc_to_text, c.doc_to_choice, c.doc_to_target) == (
        default["doc_to_text"],
        default["doc_to_choice"],
        default["doc_to_target"],
    )
    assert c.fewshot_split == default["fewshot_split"]
    assert tasks[0].context(tasks[0].eval_docs[0], 0).startswith("以下是关于农学的单项选择题")
