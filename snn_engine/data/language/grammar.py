"""An embedded language with an exactly known entropy: English-like sentences from a small probabilistic grammar.

The grammar is a unifilar finite-state source (:mod:`snn_engine.data.language.automaton`): its state before
every word is a function of the words before it, so its entropy rate is exact and a model's loss can be
compared with the best possible. Sentences::

    statement:  NP[n] ("that" NP[m] Vt[m])? ( Vi[n] | Vt[n] NP | "is"/"are"[n] Adj ) PP? "."
    question:   "does"/"do"[n] NP[n] ("that" NP[m] Vt[m])? ( Vi | Vt NP ) PP? "?"
    NP[n]:      Det (Adj (Adj)?)? Noun[n]        PP: Prep Det (Adj (Adj)?)? Place

Structure a model must learn beyond word pairs: number agreement of the determiner, the noun and the verb
(``a dog runs``, ``these dogs run``; ``does`` asks for a singular subject), carried across a relative clause
(``the dog that the big cats see runs``: the verb agrees with ``dog``, six words back), and the closing
``?`` of a question opened by ``does``/``do`` up to ~15 words earlier. After ``.``/``?`` the line ends
(``<eos>``) with probability 0.6, else the next sentence follows on the same line. Within each word class the
words have Zipf weights (``1/rank``, in the listed order). 69 words, ``<eos>`` is id 0.

The default grammar has 106 states; its entropy rate is ``h = 1.88200718`` nats (2.7152 bits) per token, best
perplexity ``exp(h) = 6.5667`` (``GrammarLanguage.entropy_per_token``, ``best_perplexity``); sentences average
8.52 tokens with their punctuation.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from snn_engine.data.language.automaton import UnifilarSource
from snn_engine.data.language.stream import LanguageData
from snn_engine.data.language.vocab import EOS, Vocab
from snn_engine.data.sequence import positive_int
from snn_engine.errors import UserError

SG, PL = "sg", "pl"
DETERMINERS = {"the": None, "a": SG, "my": None, "these": PL, "every": SG, "two": PL, "this": SG, "many": PL,
               "some": PL}
ADJECTIVES = ["big", "small", "old", "young", "happy", "quiet", "red", "green"]
NOUNS = [("dog", "dogs"), ("cat", "cats"), ("bird", "birds"), ("child", "children"), ("teacher", "teachers"),
         ("farmer", "farmers"), ("horse", "horses"), ("robot", "robots")]
PLACES = [("park", "parks"), ("river", "rivers"), ("garden", "gardens"), ("house", "houses")]
PREPOSITIONS = ["in", "near", "behind", "across"]
INTRANSITIVE = [("runs", "run"), ("sleeps", "sleep"), ("sings", "sing"), ("waits", "wait")]
TRANSITIVE = [("sees", "see"), ("likes", "like"), ("follows", "follow"), ("finds", "find")]
COPULA, AUX = ("is", "are"), ("does", "do")
PUNCT = {"stmt": ".", "q": "?"}

P_QUESTION = 0.3  # a sentence is a question
P_REL = {"stmt": 0.25, "q": 0.15}  # the subject takes a relative clause
P_ADJ = (0.3, 0.15)  # a first, then a second adjective
P_SINGULAR = 0.6  # number of a noun after a determiner that does not fix it
VERB_KIND = {"stmt": {"vi": 0.4, "vt": 0.4, "cop": 0.2}, "q": {"vi": 0.5, "vt": 0.5}}
P_PP = 0.35  # a prepositional phrase before the closing punctuation
P_EOS = 0.6  # the line ends after a sentence


def zipf(items: list) -> list[tuple[float, object]]:
    """``[(p, item)]`` with ``p ∝ 1 / rank`` in list order."""
    weights = [1.0 / (k + 1) for k in range(len(items))]
    total = sum(weights)
    return [(w / total, item) for w, item in zip(weights, items)]


def form(pair: tuple[str, str], number: str) -> str:
    return pair[0] if number == SG else pair[1]


def scaled(p: float, emissions: list) -> list:
    return [(p * q, w, s) for q, w, s in emissions]


# States are tuples: ("start",), ("det", role, need), ("mod", role, number, adjectives so far),
# ("subj_end", n), ("verb", n), ("pred",), ("qsubj_end",), ("qverb",), ("rel_verb", m, then), ("tail", mode),
# ("end", mode), ("punct",). A role says what follows a noun phrase: "subj", "qsubj", ("rel", then),
# ("obj", mode), ("pp", mode).
START = ("start",)


def emissions(state: tuple) -> list[tuple[float, str, tuple]]:
    """``[(p, word, next_state)]`` of ``state``: the grammar."""
    kind = state[0]
    if kind == "start":
        q = [(P_QUESTION / 2, AUX[0], ("det", "qsubj", SG)), (P_QUESTION / 2, AUX[1], ("det", "qsubj", PL))]
        return q + scaled(1 - P_QUESTION, emissions(("det", "subj", None)))
    if kind == "det":
        _, role, need = state
        allowed = [d for d, n in DETERMINERS.items() if need is None or n in (None, need)]
        return [(p, d, ("mod", role, DETERMINERS[d] or need, 0)) for p, d in zipf(allowed)]
    if kind == "mod":
        _, role, number, k = state
        p_adj = P_ADJ[k] if k < len(P_ADJ) else 0.0
        out = [(p_adj * p, a, ("mod", role, number, k + 1)) for p, a in zipf(ADJECTIVES)] if p_adj else []
        nouns = PLACES if role[0] == "pp" else NOUNS
        numbers = [(1.0, number)] if number else [(P_SINGULAR, SG), (1 - P_SINGULAR, PL)]
        for p_n, n in numbers:
            out += [((1 - p_adj) * p_n * p, form(pair, n), after_noun(role, n)) for p, pair in zipf(nouns)]
        return out
    if kind in ("subj_end", "qsubj_end"):
        mode = "stmt" if kind == "subj_end" else "q"
        verb = ("verb", state[1]) if mode == "stmt" else ("qverb",)
        return [(P_REL[mode], "that", ("det", ("rel", verb), None))] + scaled(1 - P_REL[mode], emissions(verb))
    if kind in ("verb", "qverb"):
        mode, n = ("stmt", state[1]) if kind == "verb" else ("q", PL)  # questions take the base (plural) form
        kinds = VERB_KIND[mode]
        out = [(kinds["vi"] * p, form(v, n), ("tail", mode)) for p, v in zipf(INTRANSITIVE)]
        out += [(kinds["vt"] * p, form(v, n), ("det", ("obj", mode), None)) for p, v in zipf(TRANSITIVE)]
        if "cop" in kinds:
            out.append((kinds["cop"], form(COPULA, n), ("pred",)))
        return out
    if kind == "pred":
        return [(p, a, ("tail", "stmt")) for p, a in zipf(ADJECTIVES)]
    if kind == "rel_verb":
        _, m, then = state
        return [(p, form(v, m), then) for p, v in zipf(TRANSITIVE)]
    if kind == "tail":
        mode = state[1]
        pp = [(P_PP * p, w, ("det", ("pp", mode), None)) for p, w in zipf(PREPOSITIONS)]
        return pp + scaled(1 - P_PP, emissions(("end", mode)))
    if kind == "end":
        return [(1.0, PUNCT[state[1]], ("punct",))]
    if kind == "punct":
        return [(P_EOS, EOS, START)] + scaled(1 - P_EOS, emissions(START))
    raise ValueError(f"unknown grammar state {state!r}")


def after_noun(role, number: str) -> tuple:
    """The state after the noun (of ``number``) that closes a noun phrase of ``role``."""
    if role == "subj":
        return ("subj_end", number)
    if role == "qsubj":
        return ("qsubj_end",)
    if role[0] == "rel":
        return ("rel_verb", number, role[1])
    if role[0] == "obj":
        return ("tail", role[1])
    return ("end", role[1])  # "pp"


def grammar_words() -> list[str]:
    """The vocabulary in id order (``<eos>`` first)."""
    words = [EOS, ".", "?", "that", *AUX, *COPULA, *DETERMINERS, *ADJECTIVES, *PREPOSITIONS]
    for pairs in (NOUNS, PLACES, INTRANSITIVE, TRANSITIVE):
        words += [w for pair in pairs for w in pair]
    return words


@functools.lru_cache(maxsize=1)
def english_grammar() -> UnifilarSource:
    """The grammar as a :class:`UnifilarSource` (built once)."""
    return UnifilarSource(START, emissions, grammar_words())


SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}


class GrammarLanguage(LanguageData):
    """Text of the embedded grammar (no files), for next-token prediction with a known best loss.

    Args:
        train_tokens, val_tokens, test_tokens: stream length N of each split (independent draws: seeds
            ``(seed, 0)``, ``(seed, 1)``, ``(seed, 2)`` of numpy's ``SeedSequence``; each starts a sentence).
        max_length: L, tokens per sample.
        seed: data seed.
        vocab_size, num_classes: optional; must equal the grammar's 69 words when given.
        name, batch_size, num_workers: see :class:`~snn_engine.data.language.stream.LanguageData`.
    Attributes:
        vocab: the 69 words (``<eos>`` is id 0); ``source``: the :class:`UnifilarSource`;
        entropy_per_token: its exact entropy rate in nats; ``best_perplexity = exp(entropy_per_token)``.
    """

    title = "grammar language"

    def __init__(self, train_tokens: int = 200_000, val_tokens: int = 20_000, test_tokens: int = 20_000,
                 max_length: int = 128, seed: int = 0, batch_size: int = 16, num_workers: int = 0,
                 vocab_size: int | None = None, num_classes: int | None = None, name: str = "lm_grammar",
                 root=None) -> None:
        self.source = english_grammar()
        self.vocab = Vocab(self.source.words, unk=None)
        for key, value in (("vocab_size", vocab_size), ("num_classes", num_classes)):
            if value is not None and value != len(self.vocab):
                raise UserError(f"the grammar language has {len(self.vocab)} words; set dataset.{key}="
                                f"{len(self.vocab)} (or null), got {value!r}")
        super().__init__(name, len(self.vocab), max_length, batch_size, num_workers)
        self.split_tokens = {split: positive_int(n, f"dataset.{split}_tokens") for split, n in
                             (("train", train_tokens), ("val", val_tokens), ("test", test_tokens))}
        if self.split_tokens["train"] <= self.max_length:
            raise UserError(f"dataset.train_tokens ({train_tokens}) must exceed dataset.max_length "
                            f"({self.max_length}) to give a training sample")
        for split in ("val", "test"):
            if self.split_tokens[split] < 2:
                raise UserError(f"dataset.{split}_tokens must be >= 2 (one predicted token), got "
                                f"{self.split_tokens[split]}")
        self.seed = int(seed)
        self.entropy_per_token = self.source.entropy_rate
        self._streams: dict[str, torch.Tensor] = {}

    def tokens(self, split: str) -> torch.Tensor:
        """``int64 [N]`` the generated stream of ``split`` (deterministic by ``seed``)."""
        split = self.check_split(split)
        if split not in self._streams:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, SPLIT_STREAM[split]]))
            self._streams[split] = torch.from_numpy(self.source.sample(self.split_tokens[split], rng))
        return self._streams[split]

    def log_probs(self, ids: torch.Tensor) -> torch.Tensor:
        """``float64 [n]`` the exact ``log p(w_t | w_<t)`` of a stream that starts a sentence (the first word
        included); ``-log_probs(...).mean()`` approaches ``entropy_per_token``."""
        return torch.from_numpy(self.source.log_probs(ids.cpu().numpy()))

    def window_entropy(self, split: str) -> float:
        """Nats per predicted token of the best predictor that sees only the current sample (the state prior
        ``pi`` at each sample's start, exact Bayesian filtering after): the floor for a model without memory
        across samples, a little above ``entropy_per_token`` because each sample starts without context."""
        total, count = self.source.window_nll(self.tokens(split).numpy(), self.max_length, split == "train")
        return total / max(count, 1)
