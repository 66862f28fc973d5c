"""Recall, precision and speed of ``minhash_dedup``: planted pairs, and clusters of edited
copies side by side with datatrove's MinHash pipeline.

Not a test: it prints its figures. Run::

    python benchmarks/minhash_bench.py                 # both corpora, defaults of minhash_dedup
    python benchmarks/minhash_bench.py --sweep         # also thresholds None, 0.7 ... 0.8
    python benchmarks/minhash_bench.py --corpus edited # only the edited-copies corpus

**Planted pairs.**
The corpus (seeded, so every run is the same): ``--docs`` documents (20 000) of 200-600
words drawn Zipf-like from a vocabulary of common English words and pronounceable made-up
words, in sentences of 6-18 words. Among them are planted pairs: ``--positives`` (500) with
true Jaccard in [0.8, 1.0) and ``--distractors`` (500) with true Jaccard in [0.5, 0.7].
The copy of a pair is made by random word substitutions, insertions and deletions until
its Jaccard falls to a target drawn uniformly from the band; Jaccard is computed exactly on
the word 5-gram shingle sets (:func:`lmops.data.minhash.shingles`, the operator's own
tokenisation), never estimated. Unplanted documents are unrelated (Jaccard ≈ 0).

Figures:

- recall: planted pairs with true Jaccard ≥ 0.8 whose two documents end up together
  (one dropped with ``duplicate_of`` the other, or both pointing at the same kept one);
- precision: of all dropped documents, the fraction whose true Jaccard with their
  ``duplicate_of`` document is ≥ 0.8 (a dropped unrelated or distractor document counts
  against it);
- distractor pairs flagged: the same "together" test on the pairs with Jaccard 0.5-0.7;
- docs/s: documents through ``minhash_dedup`` per second of wall time (one process).

**Edited copies** (``--corpus edited``; seeded). Paragraphs of at least 50 words: speeches of
``tinyshakespeare`` and English Alpaca answers from ``$LMOPS_SHARED_DATASETS`` (or
``../shared/datasets``) when present, topped up with generated paragraphs. Paragraphs that
are already near-duplicates of each other (true Jaccard ≥ 0.5) are left out, so the truth is
known. ``--clusters`` paragraphs get 1-3 edited copies each: 0.5-2 % of the words substituted
(at least one), line breaks reflowed at a random width; a copy is drawn again until its true
Jaccard with its original (word 5-grams, :func:`lmops.data.minhash.shingles`) is ≥ 0.83.
``--singletons`` more paragraphs have no copy. The corpus order is shuffled, so copies often
come before their original. Figures, for lmops and for datatrove (signature → buckets →
cluster → filter, the same n-gram, bands and rows, one task each, run in this process):

- cluster recall: clusters (an original and its copies) left with exactly one member;
- unique kept: clusters and singletons with at least one member left (1.0 = nothing lost);
- docs/s: documents per second of wall time, one process (lmops: the operator; datatrove:
  its four stages fed the same documents from memory, including its intermediate files);
  docs/cpu-s the same per second of this process's CPU time, steadier on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import tempfile
import textwrap
import time
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

from lmops.data.document import Document
from lmops.data.minhash import MinHasher, find_duplicate_pairs, jaccard, shingles
from lmops.data.operators.dedup import MinHashDedup

_COMMON_TEXT = """the of and to a in is it you that he was for on are with as his they be at one
have this from or had by hot but some what there we can out other were all your when up
use word how said an each she which do their time if will way about many then them would
write like so these her long make thing see him two has look more day could go come did my
sound no most number who over know water than call first people may down side been now
find any new work part take get place made live where after back little only round man
year came show every good me give our under name very through just form much great think
say help low line before turn cause same mean differ move right boy old too does tell
sentence set three want air well also play small end put home read hand port large spell
add even land here must big high such follow act why ask men change went light kind off
need house picture try us again animal point mother world near build self earth father
head stand own page should country found answer school grow study still learn plant cover
food sun four thought let keep eye never last door between city tree cross since hard
start might story saw far sea draw left late run while press close night real life few
stop open seem together next white children begin got walk example ease paper often
always music those both mark book letter until mile river car feet care second group
carry took rain eat room friend began idea fish mountain north once base hear horse cut
sure watch color face wood main enough plain girl usual young ready above ever red list
though feel talk bird soon body dog family direct pose leave song measure state product
black short numeral class wind question happen complete ship area half rock order fire
south problem piece told knew pass farm top whole king size heard best hour better true
during hundred am remember step early hold west ground interest reach fast five sing
listen six table travel less morning ten simple several vowel toward war lay against
pattern slow center love person money serve appear road map science rule govern pull
cold notice voice fall power town fine certain fly unit lead cry dark machine note wait
plan figure star box noun field rest correct able pound done beauty drive stood contain
front teach week final gave green oh quick develop sleep warm free minute strong special
mind behind clear tail produce fact street inch lot nothing course stay wheel full force
blue object decide surface deep moon island foot yet busy test record boat common gold
possible plane age dry wonder laugh thousand ago ran check game shape yes cool miss
brought heat snow bed bring sit perhaps fill east weight language among"""
COMMON = _COMMON_TEXT.split()

ONSETS = ["b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "br", "st", "tr"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
CODAS = ["", "n", "r", "s", "t", "l", "nd", "ck"]

THRESHOLD = 0.8  # the true Jaccard above which a pair is a duplicate, for these figures


def vocabulary(rng: random.Random, size: int) -> list[str]:
    words = list(dict.fromkeys(COMMON))
    seen = set(words)
    while len(words) < size:
        w = "".join(
            rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)
            for _ in range(rng.randint(1, 3))
        )
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


@dataclass
class Corpus:
    docs: list[Document]
    positives: list[tuple[str, str, float]]
    distractors: list[tuple[str, str, float]]


class Writer:
    """Zipf-like English-looking text; common words first, so they are the frequent ones."""

    def __init__(self, rng: random.Random, vocab_size: int = 8000) -> None:
        self.rng = rng
        self.vocab = vocabulary(rng, vocab_size)
        self.cum_weights = list(accumulate(1.0 / (rank + 10) for rank in range(len(self.vocab))))

    def words(self, n: int) -> list[str]:
        return self.rng.choices(self.vocab, cum_weights=self.cum_weights, k=n)

    def document(self) -> list[str]:
        """Words with sentence case and full stops attached; ``" ".join`` is the text."""
        out: list[str] = []
        target = self.rng.randint(200, 600)
        while len(out) < target:
            sentence = self.words(self.rng.randint(6, 18))
            sentence[0] = sentence[0].capitalize()
            sentence[-1] += "."
            out.extend(sentence)
        return out

    def variant(self, words: list[str], lo: float, hi: float) -> tuple[list[str], float]:
        """A copy of ``words`` edited until its true Jaccard lands in ``[lo, target]``.

        A random edit script (substitute 1/2, delete 1/4, insert 1/4) is drawn, and the
        shortest prefix of it that brings the Jaccard to the target is found by bisection
        (Jaccard falls almost monotonically with edits); a miss is drawn again.
        """
        base = shingles(" ".join(words))

        def edited(script: list[tuple[float, float, str]]) -> list[str]:
            copy = list(words)
            for op, where, word in script:
                pos = int(where * len(copy))
                if op < 0.5:
                    copy[pos] = word
                elif op < 0.75:
                    del copy[pos]
                else:
                    copy.insert(pos, word)
            return copy

        while True:
            target = self.rng.uniform(lo, hi)
            script = [
                (self.rng.random(), self.rng.random(), w) for w in self.words(len(words) // 4)
            ]
            a, b = 1, len(script)  # bisect for the fewest edits with Jaccard <= target
            while a < b:
                mid = (a + b) // 2
                if jaccard(base, shingles(" ".join(edited(script[:mid])))) <= target:
                    b = mid
                else:
                    a = mid + 1
            copy = edited(script[:a])
            sim = jaccard(base, shingles(" ".join(copy)))
            if lo <= sim <= target:
                return copy, sim


def build_corpus(n_docs: int, n_pos: int, n_dis: int, seed: int) -> Corpus:
    rng = random.Random(seed)
    writer = Writer(rng)
    docs: list[Document] = []
    positives: list[tuple[str, str, float]] = []
    distractors: list[tuple[str, str, float]] = []
    for kind, count, lo, hi in (("pos", n_pos, THRESHOLD, 1.0), ("dis", n_dis, 0.5, 0.7)):
        for k in range(count):
            words = writer.document()
            copy, sim = writer.variant(words, lo, hi)
            a, b = f"{kind}{k}a", f"{kind}{k}b"
            docs += [Document(" ".join(words), a), Document(" ".join(copy), b)]
            (positives if kind == "pos" else distractors).append((a, b, sim))
    while len(docs) < n_docs:
        docs.append(Document(" ".join(writer.document()), f"bg{len(docs)}"))
    rng.shuffle(docs)
    return Corpus(docs, positives, distractors)


def evaluate(corpus: Corpus, threshold: float | str | None) -> dict[str, float]:
    params = {} if threshold == "default" else {"threshold": threshold}
    op = MinHashDedup(MinHashDedup.Params(**params))
    docs = [Document(d.text, d.id) for d in corpus.docs]
    texts = {d.id: d.text for d in docs}
    start = time.perf_counter()
    kept = list(op(docs))
    elapsed = time.perf_counter() - start
    kept_ids = {d.id for d in kept}
    rep = {d.id: d.id if d.id in kept_ids else d.metadata["duplicate_of"] for d in docs}
    dropped = [d for d in docs if d.id not in kept_ids]
    good = sum(
        jaccard(shingles(d.text), shingles(texts[d.metadata["duplicate_of"]])) >= THRESHOLD
        for d in dropped
    )
    found_pos = sum(rep[a] == rep[b] for a, b, _ in corpus.positives)
    found_dis = sum(rep[a] == rep[b] for a, b, _ in corpus.distractors)
    return {
        "recall": found_pos / len(corpus.positives),
        "precision": good / len(dropped) if dropped else 1.0,
        "dropped": len(dropped),
        "false_drops": len(dropped) - good,
        "distractors_flagged": found_dis,
        "docs_per_s": len(docs) / elapsed,
    }


# -- edited copies ---------------------------------------------------------------------------------
MIN_WORDS = 50
COPY_JACCARD = 0.83


def shared_paragraphs() -> list[str]:
    """Real English paragraphs of at least MIN_WORDS words from the shared datasets."""
    root = Path(
        os.environ.get("LMOPS_SHARED_DATASETS") or Path(__file__).parents[2] / "shared/datasets"
    )
    out: list[str] = []
    shakespeare = root / "tinyshakespeare" / "input.txt"
    if shakespeare.exists():
        out += [b for b in shakespeare.read_text(encoding="utf-8").split("\n\n")]
    for f in sorted((root / "alpaca_zh_en").glob("part_*.json")):
        out += [r.get("en_output", "") for r in json.loads(f.read_text(encoding="utf-8"))]
    return [p.strip() for p in out if len(p.split()) >= MIN_WORDS]


def edit(rng: random.Random, writer: Writer, text: str) -> str:
    """Substitute 0.5-2 % of the words (at least one) and reflow the line breaks."""
    words = text.split()
    n = max(1, round(rng.uniform(0.005, 0.02) * len(words)))
    for pos in rng.sample(range(len(words)), n):
        words[pos] = writer.words(1)[0]
    return textwrap.fill(" ".join(words), width=rng.randint(40, 100))


@dataclass
class EditedCorpus:
    docs: list[Document]
    cluster_of: dict[str, int]  # doc id -> its cluster (singletons are clusters of one)
    n_clusters: int  # clusters with copies; cluster numbers below this have copies
    copy_jaccards: list[float]
    real: int  # originals drawn from the shared datasets


def build_edited_corpus(n_clusters: int, n_singletons: int, seed: int) -> EditedCorpus:
    rng = random.Random(seed)
    writer = Writer(rng)
    real = shared_paragraphs()
    rng.shuffle(real)
    pool = list(real)
    while len(pool) < 1.05 * (n_clusters + n_singletons):
        words = writer.document()[: rng.randint(MIN_WORDS, 200)]
        pool.append(" ".join(words))
    # Leave out paragraphs that are near-duplicates of an earlier one (Shakespeare repeats
    # itself): candidates from a loose LSH (28 bands of 4: Jaccard ~0.4 and up), then exact.
    hasher = MinHasher(num_bands=28, rows_per_band=4)
    sets = [shingles(p) for p in pool]
    drop = {
        b
        for a, b in find_duplicate_pairs(hasher.signatures(pool), hasher)
        if jaccard(sets[a], sets[b]) >= 0.5
    }
    originals = [p for i, p in enumerate(pool) if i not in drop][: n_clusters + n_singletons]
    n_real = sum(1 for p in originals if p in set(real))
    docs: list[Document] = []
    cluster_of: dict[str, int] = {}
    sims: list[float] = []
    for c, text in enumerate(originals):
        docs.append(Document(text, f"c{c}"))
        cluster_of[f"c{c}"] = c
        if c >= n_clusters:
            continue
        base = shingles(text)
        for k in range(rng.randint(1, 3)):
            while True:
                copy = edit(rng, writer, text)
                sim = jaccard(base, shingles(copy))
                if sim >= COPY_JACCARD:
                    break
            sims.append(sim)
            docs.append(Document(copy, f"c{c}e{k}"))
            cluster_of[f"c{c}e{k}"] = c
    rng.shuffle(docs)
    return EditedCorpus(docs, cluster_of, n_clusters, sims, n_real)


def cluster_figures(corpus: EditedCorpus, kept_ids: set[str]) -> dict[str, float]:
    kept_per: dict[int, int] = {}
    for doc_id in kept_ids:
        c = corpus.cluster_of[doc_id]
        kept_per[c] = kept_per.get(c, 0) + 1
    units = max(corpus.cluster_of.values()) + 1
    collapsed = sum(1 for c in range(corpus.n_clusters) if kept_per.get(c, 0) == 1)
    return {
        "cluster_recall": collapsed / corpus.n_clusters,
        "unique_kept": sum(1 for c in range(units) if kept_per.get(c, 0) >= 1) / units,
        "kept": len(kept_ids),
        "ideal": units,
    }


def run_lmops(corpus: EditedCorpus, memory_chars: int | None = None) -> dict[str, float]:
    op = MinHashDedup()
    if memory_chars is not None:
        op.memory_chars = memory_chars
    docs = [Document(d.text, d.id) for d in corpus.docs]
    start, cpu = time.perf_counter(), time.process_time()
    kept = {d.id for d in op(docs)}
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        **cluster_figures(corpus, kept),
        "docs_per_s": len(docs) / elapsed,
        "docs_per_cpu_s": len(docs) / cpu,
        **op.counters,
    }


def run_datatrove(corpus: EditedCorpus) -> dict[str, float] | None:
    try:
        from datatrove.data import Document as DTDoc
        from datatrove.executor import LocalPipelineExecutor
        from datatrove.pipeline.dedup import (
            MinhashConfig,
            MinhashDedupBuckets,
            MinhashDedupCluster,
            MinhashDedupFilter,
            MinhashDedupSignature,
        )
        from datatrove.utils.hashing import HashConfig
        from loguru import logger
    except ImportError:
        return None
    logger.remove()  # datatrove logs every step through loguru
    p = MinHashDedup.Params()
    # datatrove's default xxhash shingle hash fails with xxhash 4 (str not encoded); its SHA-1
    # hash is the same 64-bit scheme otherwise.
    config = MinhashConfig(
        n_grams=p.ngram,
        num_buckets=p.num_bands,
        hashes_per_bucket=p.rows_per_band,
        seed=p.seed,
        hash_config=HashConfig(precision=64, hash_fc="sha1"),
    )
    kept: list[str] = []

    def keep(data: object, rank: int = 0, world_size: int = 1) -> None:
        kept.extend(d.id for d in data)  # type: ignore[attr-defined]

    with tempfile.TemporaryDirectory(prefix="minhash-bench-") as tmp:
        root = Path(tmp)

        def run(pipeline: list[object], tasks: int = 1, name: str = "") -> None:
            quiet = io.StringIO()  # its stats tables
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                LocalPipelineExecutor(
                    pipeline=pipeline, tasks=tasks, workers=1, logging_dir=str(root / "logs" / name)
                ).run()
            logger.remove()

        def docs() -> list[object]:
            return [DTDoc(text=d.text, id=d.id) for d in corpus.docs]

        start, cpu = time.perf_counter(), time.process_time()
        run([docs(), MinhashDedupSignature(str(root / "sigs"), config=config)], name="sig")
        run(
            [MinhashDedupBuckets(str(root / "sigs"), str(root / "buckets"), config=config)],
            config.num_buckets,
            "buckets",
        )
        run(
            [MinhashDedupCluster(str(root / "buckets"), str(root / "remove"), config=config)],
            name="cluster",
        )
        run([docs(), MinhashDedupFilter(str(root / "remove")), keep], name="filter")
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        **cluster_figures(corpus, set(kept)),
        "docs_per_s": len(corpus.docs) / elapsed,
        "docs_per_cpu_s": len(corpus.docs) / cpu,
    }


def edited_main(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    corpus = build_edited_corpus(args.clusters, args.singletons, args.seed)
    sims = sorted(corpus.copy_jaccards)
    print(
        f"edited copies: {len(corpus.docs)} docs: {corpus.n_clusters} paragraphs with 1-3 copies "
        f"({len(sims)} copies, true J {sims[0]:.3f}-{sims[-1]:.3f}, median "
        f"{sims[len(sims) // 2]:.3f}) and {args.singletons} without; {corpus.real} paragraphs "
        f"from the shared datasets; built in {time.perf_counter() - t0:.1f}s"
    )
    rows = [("lmops minhash_dedup", run_lmops(corpus))]
    # the same with every document waiting on disk between the passes (a corpus too big to
    # hold): the price of the second pass
    rows.append(("lmops, docs on disk", run_lmops(corpus, memory_chars=0)))
    dt = run_datatrove(corpus)
    if dt is None:
        print("datatrove not installed: lmops figures only (pip install -e '.[dev]')")
    else:
        rows.append(("datatrove 4 stages", dt))
    print(
        f"{'':<20} {'cluster recall':>14} {'unique kept':>11} {'kept':>6} {'ideal':>6} "
        f"{'docs/s':>8} {'docs/cpu-s':>10}"
    )
    for name, r in rows:
        print(
            f"{name:<20} {r['cluster_recall']:14.4f} {r['unique_kept']:11.4f} {r['kept']:6d} "
            f"{r['ideal']:6d} {r['docs_per_s']:8.0f} {r['docs_per_cpu_s']:10.0f}"
        )
    sizes = {
        k: v
        for k, v in rows[0][1].items()
        if k.startswith(("clusters", "clustered", "cluster_size", "largest"))
    }
    print(f"lmops cluster sizes: {sizes}")
    print(
        "cluster recall: paragraphs whose copies all collapsed to one kept member; unique kept: "
        "paragraphs (with or without copies) with a member left"
    )


def planted_main(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    corpus = build_corpus(args.docs, args.positives, args.distractors, args.seed)
    pos = sorted(s for *_, s in corpus.positives)
    dis = sorted(s for *_, s in corpus.distractors)
    print(
        f"corpus: {len(corpus.docs)} docs, {len(pos)} positive pairs (true J {pos[0]:.3f}-"
        f"{pos[-1]:.3f}, median {pos[len(pos) // 2]:.3f}), {len(dis)} distractor pairs "
        f"(true J {dis[0]:.3f}-{dis[-1]:.3f}); built in {time.perf_counter() - t0:.1f}s"
    )
    default = MinHashDedup.Params()
    print(f"minhash_dedup defaults: {default.model_dump()}")
    thresholds: list[float | str | None] = ["default"]
    if args.sweep:
        thresholds += [None, 0.7, 0.72, 0.75, 0.76, 0.77, 0.78, 0.8]
    print(
        f"{'threshold':>10} {'recall':>7} {'precision':>9} {'dropped':>7} {'false':>5} "
        f"{'distr.':>6} {'docs/s':>7}"
    )
    for t in thresholds:
        r = evaluate(corpus, t)
        print(
            f"{t!s:>10} {r['recall']:7.4f} {r['precision']:9.4f} {r['dropped']:7d} "
            f"{r['false_drops']:5d} {r['distractors_flagged']:6d} {r['docs_per_s']:7.0f}"
        )
    print(
        "recall: planted pairs with true J >= 0.8 found; precision: dropped docs whose true J "
        "with their duplicate_of is >= 0.8; distr.: distractor pairs (J 0.5-0.7) flagged"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", choices=["planted", "edited", "both"], default="both")
    ap.add_argument("--docs", type=int, default=20_000, help="planted: corpus size")
    ap.add_argument("--positives", type=int, default=500)
    ap.add_argument("--distractors", type=int, default=500)
    ap.add_argument("--clusters", type=int, default=4000, help="edited: paragraphs with copies")
    ap.add_argument("--singletons", type=int, default=6000, help="edited: paragraphs without")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sweep", action="store_true", help="planted: also run other thresholds")
    args = ap.parse_args()
    if args.corpus in ("planted", "both"):
        planted_main(args)
    if args.corpus in ("edited", "both"):
        edited_main(args)


if __name__ == "__main__":
    main()
