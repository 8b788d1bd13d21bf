"""The checkpoint's generation settings for greedy decoding, applied to one step's logits in one place.

transformers' `generate()` applies what a checkpoint's generation_config.json sets through logits processors
(Qwen2.5-VL-Instruct: repetition_penalty 1.05; Florence-2: no_repeat_ngram_size 3, forced BOS / EOS).
`DecodingRules` reads those settings once at load; `rules.picker(context, max_new_tokens)` gives the function
every engine turns one step's logits (V,) into the next token with: a plain argmax when no rule is set (the fast
path, nothing copied), else the rules applied in generate()'s order on a float32 numpy copy (generate() also
works on float32 logits), then argmax. The context is what generate() sees as `input_ids`: the prompt for a
decoder-only model (image tokens included), the decoder start token for an encoder-decoder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Picker = Callable[[Any], int]  # one step's logits (V,) (torch tensor or numpy array) -> the next token


def _argmax(logits: Any) -> int:
    return int(logits.argmax())


def _ids(value: Any) -> tuple[int, ...]:
    """A token id or a list of them (as generation configs write either) -> a tuple; None -> ()."""
    if value is None:
        return ()
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)


@dataclass(frozen=True)
class DecodingRules:
    """What a generation config sets that changes greedy tokens; the defaults change nothing."""

    repetition_penalty: float = 1.0  # logits of every token in the context: / penalty if > 0, * penalty if < 0
    no_repeat_ngram_size: int = 0  # no n-gram of this size occurs twice in the context + generated ids
    bad_words_ids: tuple[tuple[int, ...], ...] = ()  # never generated (the last token of a sequence after the rest)
    forced_bos_token_id: int | None = None  # the first token of a context of length 1 (encoder-decoders)
    forced_eos_token_id: tuple[int, ...] = ()  # the last token the budget allows
    suppress_tokens: tuple[int, ...] = ()  # never generated
    begin_suppress_tokens: tuple[int, ...] = ()  # not generated as the first token
    notes: tuple[str, ...] = ()  # settings read but not applied by greedy decoding, for the log

    @classmethod
    def from_generation_config(cls, config: Any) -> DecodingRules:
        """The rules of a transformers GenerationConfig (a model's, loaded from generation_config.json); None: none."""
        if config is None:
            return cls()

        def get(name: str, default: Any = None) -> Any:
            value = getattr(config, name, default)
            return default if value is None else value

        notes = []
        if get("do_sample", False):
            sampling = ", ".join(f"{k} {get(k)}" for k in ("temperature", "top_p", "top_k") if get(k) is not None)
            notes.append(f"generation config: do_sample true ({sampling}) is ignored: this node decodes greedily")
        if get("num_beams", 1) > 1:
            notes.append(f"generation config: num_beams {get('num_beams')} is ignored: this node decodes greedily "
                         "(one beam)")
        for name, neutral in (("min_length", 0), ("min_new_tokens", 0), ("sequence_bias", {}),
                              ("encoder_repetition_penalty", 1.0), ("encoder_no_repeat_ngram_size", 0),
                              ("exponential_decay_length_penalty", ()), ("guidance_scale", 1.0)):
            if get(name, neutral) != neutral:  # unset (None) or neutral: nothing to say
                notes.append(f"generation config: {name} {get(name)} is not applied by this node's engines")
        eos = set(_ids(get("eos_token_id")))
        bad_words = tuple(tuple(int(t) for t in seq) for seq in get("bad_words_ids", ())
                          if not (len(seq) == 1 and int(seq[0]) in eos))  # generate() never bans EOS this way
        return cls(repetition_penalty=float(get("repetition_penalty", 1.0)),
                   no_repeat_ngram_size=int(get("no_repeat_ngram_size", 0)),
                   bad_words_ids=bad_words,
                   forced_bos_token_id=get("forced_bos_token_id"),
                   forced_eos_token_id=_ids(get("forced_eos_token_id")),
                   suppress_tokens=_ids(get("suppress_tokens")),
                   begin_suppress_tokens=_ids(get("begin_suppress_tokens")),
                   notes=tuple(notes))

    @property
    def active(self) -> bool:
        """Whether any rule changes a token (False: the engines take the plain argmax)."""
        return bool(self.repetition_penalty != 1.0 or self.no_repeat_ngram_size > 0 or self.bad_words_ids
                    or self.forced_bos_token_id is not None or self.forced_eos_token_id or self.suppress_tokens
                    or self.begin_suppress_tokens)

    def describe(self) -> str:
        """The rules set, for the log: 'repetition_penalty 1.05, no_repeat_ngram_size 3' or 'none'."""
        set_rules = [f"{name} {value}" for name, value in (
            ("repetition_penalty", self.repetition_penalty if self.repetition_penalty != 1.0 else None),
            ("no_repeat_ngram_size", self.no_repeat_ngram_size or None),
            ("bad_words_ids", list(map(list, self.bad_words_ids)) or None),
            ("forced_bos_token_id", self.forced_bos_token_id),
            ("forced_eos_token_id", list(self.forced_eos_token_id) or None),
            ("suppress_tokens", list(self.suppress_tokens) or None),
            ("begin_suppress_tokens", list(self.begin_suppress_tokens) or None)) if value is not None]
        return ", ".join(set_rules) or "none"

    def picker(self, context: Sequence[int] | Any, max_new_tokens: int) -> Picker:
        """The next-token function for one query: `context` (ids, or a 1-D tensor of them) as generate() sees it
        (see the module docstring)."""
        return _RulePicker(self, context, max_new_tokens) if self.active else _argmax


class _RulePicker:
    """The rules over one query's growing context: each call applies them to a step's logits, takes the argmax
    and appends it (greedy decoding feeds exactly the token it picked)."""

    def __init__(self, rules: DecodingRules, context: Sequence[int] | Any, max_new_tokens: int):
        context = context.tolist() if hasattr(context, "tolist") else list(context)
        self.rules = rules
        self.context: list[int] = []
        self.begin = len(context) + (1 if len(context) == 1 and rules.forced_bos_token_id is not None else 0)
        self.max_length = len(context) + max_new_tokens
        self._seen: set[int] = set()  # tokens the repetition penalty applies to
        self._seen_ids = np.zeros(0, np.int64)
        self._ngrams: dict[tuple[int, ...], set[int]] = {}  # (n-1)-token prefix -> the tokens that followed it
        self._bad_words = np.array([s[0] for s in rules.bad_words_ids if len(s) == 1], np.int64)  # always banned
        self._bad_after = [(s[:-1], s[-1]) for s in rules.bad_words_ids if len(s) > 1]  # banned after their prefix
        self._suppressed = np.array(rules.suppress_tokens, np.int64)
        self._begin_suppressed = np.array(rules.begin_suppress_tokens, np.int64)
        for token in context:
            self._append(token)

    def __call__(self, logits: Any) -> int:
        token = int(self.apply(_float32_copy(logits)).argmax())
        self._append(token)
        return token

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """The rules on float32 scores (V,) for the current context, in place, in generate()'s order."""
        rules, context, vocab = self.rules, self.context, scores.shape[0]
        if rules.repetition_penalty != 1.0:
            if len(self._seen) != self._seen_ids.size:  # a token not seen before joined the context
                self._seen_ids = np.fromiter(sorted(self._seen), np.int64)
            ids = self._seen_ids[self._seen_ids < vocab]  # ids past the output vocabulary cannot be generated
            penalty = np.float32(rules.repetition_penalty)
            picked = scores[ids]
            scores[ids] = np.where(picked < 0, picked * penalty, picked / penalty)
        n = rules.no_repeat_ngram_size
        if n > 0 and len(context) >= n:
            banned = self._ngrams.get(tuple(context[len(context) - n + 1:]), ())
            scores[[t for t in banned if t < vocab]] = -np.inf
        scores[self._bad_words[self._bad_words < vocab]] = -np.inf
        for prefix, token in self._bad_after:
            if len(context) >= len(prefix) and tuple(context[len(context) - len(prefix):]) == prefix:
                scores[token] = -np.inf
        if rules.forced_bos_token_id is not None and len(context) == 1:
            scores[:] = -np.inf
            scores[rules.forced_bos_token_id] = 0.0
        if rules.forced_eos_token_id and len(context) == self.max_length - 1:
            scores[:] = -np.inf
            scores[list(rules.forced_eos_token_id)] = 0.0
        scores[self._suppressed[self._suppressed < vocab]] = -np.inf
        if len(context) == self.begin:
            scores[self._begin_suppressed[self._begin_suppressed < vocab]] = -np.inf
        return scores

    def _append(self, token: int) -> None:
        context = self.context
        context.append(token)
        if self.rules.repetition_penalty != 1.0:
            self._seen.add(token)
        n = self.rules.no_repeat_ngram_size
        if n > 0 and len(context) >= n:
            self._ngrams.setdefault(tuple(context[len(context) - n:-1]), set()).add(token)


def _float32_copy(logits: Any) -> np.ndarray:
    """One step's logits (V,), torch (any device or dtype) or numpy, as a float32 numpy array of their own."""
    if hasattr(logits, "detach"):
        logits = logits.detach().float().cpu().numpy()
    return np.array(logits, dtype=np.float32, copy=True)
