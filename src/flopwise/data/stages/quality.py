"""Quality filters: length, Gopher quality and repetition (prose), C4 line rules (web prose), code rules.

Each drops a document with a reason named after the rule it failed; C4 also removes failing lines from
documents it keeps.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np

from flopwise.data.stages.base import Stage


def _words(text: str) -> list[str]:
    return text.split()


class Length(Stage):
    type = "length"
    defaults = {"min_chars": 1, "max_chars": 10**9, "min_words": 0, "max_words": 10**9}

    def apply(self, doc):
        n = len(doc["text"])
        if n < self.p["min_chars"]:
            return "too_short_chars"
        if n > self.p["max_chars"]:
            return "too_long_chars"
        if self.p["min_words"] or self.p["max_words"] < 10**9:
            w = len(_words(doc["text"]))
            if w < self.p["min_words"]:
                return "too_few_words"
            if w > self.p["max_words"]:
                return "too_many_words"
        return None


STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])
BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "–", "-", "*")


class GopherQuality(Stage):
    """Rae et al. 2021 (Gopher), appendix A.1.1: document-level quality heuristics for prose."""

    type = "gopher_quality"
    defaults = {
        "min_words": 50,
        "max_words": 100_000,
        "min_mean_word_len": 3.0,
        "max_mean_word_len": 10.0,
        "max_symbol_word_ratio": 0.1,
        "max_bullet_lines": 0.9,
        "max_ellipsis_lines": 0.3,
        "min_alpha_words": 0.8,
        "min_stop_words": 2,
    }

    def apply(self, doc):
        p = self.p
        text = doc["text"]
        words = _words(text)
        n = len(words)
        if n < p["min_words"]:
            return "gopher_too_few_words"
        if n > p["max_words"]:
            return "gopher_too_many_words"
        mean = sum(map(len, words)) / n
        if not p["min_mean_word_len"] <= mean <= p["max_mean_word_len"]:
            return "gopher_mean_word_length"
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols / n > p["max_symbol_word_ratio"]:
            return "gopher_symbol_ratio"
        lines = text.splitlines()
        if lines:
            if sum(ln.lstrip().startswith(BULLETS) for ln in lines) / len(lines) > p["max_bullet_lines"]:
                return "gopher_bullet_lines"
            ends = sum(ln.rstrip().endswith(("...", "…")) for ln in lines)
            if ends / len(lines) > p["max_ellipsis_lines"]:
                return "gopher_ellipsis_lines"
        if 1 - len(_NO_LETTER_WORD.findall(text)) / n < p["min_alpha_words"]:
            return "gopher_alpha_words"
        if p["min_stop_words"]:
            found = 0
            for w in words:
                if w in STOP_WORDS or w.lower() in STOP_WORDS:
                    found += 1
                    if found >= p["min_stop_words"]:
                        break
            else:
                return "gopher_stop_words"
        return None


_NO_LETTER_WORD = re.compile(
    r"(?<!\S)(?:[^\w\s]|[\d_])+(?!\S)"
)  # a whitespace-separated word without a letter


class GopherRepetition(Stage):
    """Rae et al. 2021 (Gopher), table A1: repeated lines, paragraphs and n-grams. Fractions are of the
    document's characters; words are runs of word characters or of punctuation (as an English word
    tokenizer splits them), n-grams are counted as in the paper's reference implementations."""

    type = "gopher_repetition"
    defaults = {
        "max_dup_line_frac": 0.3,
        "max_dup_para_frac": 0.3,
        "max_dup_line_char_frac": 0.2,
        "max_dup_para_char_frac": 0.2,
        "top_ngram_char_frac": {"2": 0.2, "3": 0.18, "4": 0.16},
        "dup_ngram_char_frac": {"5": 0.15, "6": 0.14, "7": 0.13, "8": 0.12, "9": 0.11, "10": 0.10},
    }

    @staticmethod
    def _dups(elements: list[str]) -> tuple[int, int]:
        seen: set[str] = set()
        dup = dup_chars = 0
        for e in elements:
            if e in seen:
                dup += 1
                dup_chars += len(e)
            else:
                seen.add(e)
        return dup, dup_chars

    def apply(self, doc):
        p = self.p
        text = doc["text"]
        total = len(text)
        if not total:
            return "empty"
        paras = _PARAS.split(text.strip())
        d, dc = self._dups(paras)
        if d / len(paras) > p["max_dup_para_frac"]:
            return "gopher_dup_paragraphs"
        if dc / total > p["max_dup_para_char_frac"]:
            return "gopher_dup_paragraph_chars"
        lines = _LINES.split(text)
        d, dc = self._dups(lines)
        if d / len(lines) > p["max_dup_line_frac"]:
            return "gopher_dup_lines"
        if dc / total > p["max_dup_line_char_frac"]:
            return "gopher_dup_line_chars"
        words = _TOKENS.findall(text)
        for n_str, limit in p["top_ngram_char_frac"].items():
            n = int(n_str)
            if len(words) < n:
                continue
            grams = Counter(zip(*[words[i:] for i in range(n)], strict=False))
            gram, count = grams.most_common(1)[0]
            if (sum(map(len, gram)) + n - 1) * count / total > limit:
                return f"gopher_top_{n}gram"
        if p["dup_ngram_char_frac"] and len(words) >= 5:
            reason = _dup_ngrams(words, p["dup_ngram_char_frac"], total)
            if reason:
                return reason
        return None


def _dup_ngrams(words: list[str], limits: dict, total: int) -> str | None:
    """Characters in repeated n-grams, scanning left to right and jumping past each repeat (the reference
    definition). Vectorised: n-grams are hashed with numpy; the exact scan only runs when an upper bound
    (all characters of non-first occurrences) could exceed the limit."""
    index: dict[str, int] = {}
    ids = np.fromiter((index.setdefault(w, len(index) + 1) for w in words), dtype=np.uint64, count=len(words))
    lens = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    csum = np.concatenate([[0], np.cumsum(lens)])
    for n_str, limit in limits.items():
        n = int(n_str)
        m = len(words) - n + 1
        if m <= 0:
            continue
        h = np.zeros(m, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in range(n):
                h = h * np.uint64(0x9E3779B97F4A7C15) + ids[k : k + m]
        chars = csum[n : n + m] - csum[:m]
        _, first = np.unique(h, return_index=True)
        repeat = np.ones(m, dtype=bool)
        repeat[first] = False
        if chars[repeat].sum() / total <= limit:
            continue  # even counting every repeat cannot reach the limit
        seen: set = set()
        hl, cl = h.tolist(), chars.tolist()
        repeated, i = 0, 0
        while i < m:
            if hl[i] in seen:
                repeated += cl[i]
                i += n
            else:
                seen.add(hl[i])
                i += 1
        if repeated / total > limit:
            return f"gopher_dup_{n}gram"
    return None


_PARAS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")
_TOKENS = re.compile(r"\w+|[^\w\s]+")


class C4(Stage):
    """Raffel et al. 2020 (C4): line rules for web prose; lines failing them are removed, then the document
    is judged as a whole."""

    type = "c4"
    defaults = {
        "min_words_per_line": 3,
        "min_sentences": 3,
        "require_terminal_punctuation": True,
        "drop_lines_with": ["javascript", "terms of use", "privacy policy", "cookie policy", "uses cookies"],
        "drop_lorem_ipsum": True,
        "drop_curly_brace": True,
    }
    TERMINAL = (".", "!", "?", '"', "'", "”", "’")

    def apply(self, doc):
        p = self.p
        text = doc["text"]
        low = text.lower()
        if p["drop_lorem_ipsum"] and "lorem ipsum" in low:
            return "c4_lorem_ipsum"
        if p["drop_curly_brace"] and "{" in text:
            return "c4_curly_brace"
        kept = []
        for line in text.split("\n"):
            s = line.strip()
            if not s:
                continue
            if p["require_terminal_punctuation"] and not s.endswith(self.TERMINAL):
                continue
            if len(s.split()) < p["min_words_per_line"]:
                continue
            ls = s.lower()
            if any(b in ls for b in p["drop_lines_with"]):
                continue
            kept.append(s)
        if not kept:
            return "c4_no_lines_left"
        new = "\n".join(kept)
        if len(re.findall(r"[.!?]+(?:\s|$)", new)) < p["min_sentences"]:
            return "c4_too_few_sentences"
        doc["text"] = new
        return None


GENERATED_MARKERS = [
    "auto-generated",
    "autogenerated",
    "automatically generated",
    "generated by",
    "do not edit",
    "@generated",
]


class CodeQuality(Stage):
    """Rules for source code (after The Stack / StarCoder data cleaning)."""

    type = "code_quality"
    defaults = {
        "max_line_length": 1000,
        "max_mean_line_length": 100.0,
        "min_alnum_frac": 0.25,
        "generated_markers": GENERATED_MARKERS,
        "marker_chars": 500,  # look for markers in the first this many characters
    }

    def apply(self, doc):
        p = self.p
        text = doc["text"]
        head = text[: p["marker_chars"]].lower()
        if any(m in head for m in p["generated_markers"]):
            return "code_auto_generated"
        lines = text.split("\n")
        if max(map(len, lines)) > p["max_line_length"]:
            return "code_max_line_length"
        if len(text) / len(lines) > p["max_mean_line_length"]:
            return "code_mean_line_length"
        if text.isascii():
            alnum = len(text) - len(text.translate(_NON_ALNUM_ASCII_DEL))
        else:
            alnum = sum(c.isalnum() for c in text)
        if alnum / max(len(text), 1) < p["min_alnum_frac"]:
            return "code_alnum_fraction"
        return None


_NON_ALNUM_ASCII_DEL = str.maketrans("", "", string.ascii_letters + string.digits)

