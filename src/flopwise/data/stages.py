"""Pipeline stages. Each takes documents in and lets some out, counting drops by reason.

Per-document stages (`Stage.process`) run inside a work unit. Dedup stages are barriers: each work unit
computes a signature per document (`signature`), then one reduce over all units in a fixed order
decides which documents go (`DedupStage.reduce`), so the result is the same however the work is spread.

Stage types and their parameters (all optional):
  normalize          nfc, ftfy, strip_control
  length             min_chars, max_chars, min_words, max_words
  gopher_quality     min_words, max_words, min_mean_word_len, max_mean_word_len, max_symbol_word_ratio,
                     max_bullet_lines, max_ellipsis_lines, min_alpha_words, min_stop_words
  gopher_repetition  max_dup_line_frac, max_dup_para_frac, max_dup_line_char_frac, max_dup_para_char_frac,
                     top_ngram_char_frac {2,3,4}, dup_ngram_char_frac {5..10}
  c4                 min_words_per_line, min_sentences, drop_lorem_ipsum, drop_curly_brace, line filters
  code_quality       max_line_length, max_mean_line_length, min_alnum_frac, generated_markers, marker_chars
  pii                emails, ip_addresses, secrets (placeholders <EMAIL>, <IP_ADDRESS>, <SECRET>)
  exact_dedup        (content hash; keeps the first occurrence in input order)
  near_dedup         threshold, num_perm, ngram, seed (MinHash-LSH with datasketch)
  verify_code        see flopwise.data.verify
Every stage also takes `name` (for reports) and `only_sources` (names of sources it applies to).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from flopwise.data.config import StageConfig
from flopwise.data.sources import text_bytes
from flopwise.errors import ConfigError


@dataclass
class StageStats:
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    drops: Counter = field(default_factory=Counter)
    extra: dict = field(default_factory=dict)

    def merge(self, other: dict) -> None:
        self.docs_in += other["docs_in"]
        self.docs_out += other["docs_out"]
        self.bytes_in += other["bytes_in"]
        self.bytes_out += other["bytes_out"]
        self.drops.update(other["drops"])
        for k, v in other.get("extra", {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                self.extra[k] = self.extra.get(k, 0) + v
            elif isinstance(v, list):
                self.extra[k] = (self.extra.get(k, []) + v)[:50]
            elif isinstance(v, dict):
                cur = self.extra.setdefault(k, {})
                for kk, vv in v.items():
                    cur[kk] = cur.get(kk, 0) + vv
            else:
                self.extra[k] = v

    def to_json(self) -> dict:
        return {
            "docs_in": self.docs_in,
            "docs_out": self.docs_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "drops": dict(self.drops),
            "extra": self.extra,
        }


class Stage:
    type = ""
    barrier = False
    defaults: dict = {}

    def __init__(self, name: str, only_sources: list[str] | None = None, **params):
        self.name = name
        self.only_sources = only_sources or []
        self.p = {**self.defaults, **params}
        self.stats = StageStats()

    def applies(self, doc: dict) -> bool:
        return not self.only_sources or doc["id"].split(":", 1)[0] in self.only_sources

    def apply(self, doc: dict) -> str | None:
        """Change `doc` in place if needed; return a drop reason, or None to keep it."""
        raise NotImplementedError

    def process(self, docs: list[dict]) -> list[dict]:
        out = []
        st = self.stats
        for doc in docs:
            st.docs_in += 1
            nb = text_bytes(doc["text"])
            st.bytes_in += nb
            if self.applies(doc):
                reason = self.apply(doc)
                if reason is not None:
                    st.drops[reason] += 1
                    continue
                nb = text_bytes(doc["text"])
            st.docs_out += 1
            st.bytes_out += nb
            out.append(doc)
        return out

    def close(self) -> None:
        """Release resources (thread pools) at the end of a unit."""


# ---------------------------------------------------------------- normalise

_CONTROL = {c: None for c in range(32) if chr(c) not in "\t\n\r"}
_CONTROL.update({0x7F: None, **{c: None for c in range(0x80, 0xA0)}})


class Normalize(Stage):
    type = "normalize"
    defaults = {"nfc": True, "ftfy": True, "strip_control": True}

    def __init__(self, name, only_sources=None, **params):
        super().__init__(name, only_sources, **params)
        self._fix = None
        if self.p["ftfy"]:
            import ftfy

            cfg = ftfy.TextFixerConfig(unescape_html=False, normalization=None, explain=False)
            self._fix = lambda t: ftfy.fix_text(t, cfg)

    def apply(self, doc):
        text = doc["text"]
        if not text.isascii():  # mojibake and non-NFC forms need non-ASCII characters
            if self._fix is not None:
                text = self._fix(text)
            if self.p["nfc"]:
                text = unicodedata.normalize("NFC", text)
        if self.p["strip_control"]:
            if "\r" in text:  # as ftfy's fix_line_breaks: CRLF and CR become LF
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            text = text.translate(_CONTROL)
        if not text.strip():
            return "empty_after_normalize"
        doc["text"] = text
        return None


# ---------------------------------------------------------------- quality filters

_WORD = re.compile(r"\S+")
_PUNCT = set(string.punctuation)


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


# ---------------------------------------------------------------- PII


_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}(?![\w:])")
_SECRETS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),  # GitHub token
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"),  # Slack token
    re.compile(r"\bsk-[A-Za-z0-9_-]{32,}\b"),  # OpenAI-style key
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),  # Google API key
]
_ASSIGNED_SECRET = re.compile(
    r"""(?i)((?:api[_-]?key|secret|token|passw(?:or)?d|access[_-]?key)["']?\s*[:=]\s*["'])([^"'\s]{12,})(["'])"""
)
_KEEP_IPS = {"127.0.0.1", "0.0.0.0", "255.255.255.255", "255.255.255.0"}


class PII(Stage):
    type = "pii"
    defaults = {"emails": True, "ip_addresses": True, "secrets": True}

    def apply(self, doc):
        text = doc["text"]
        counts = self.stats.extra.setdefault("replaced", {})
        if self.p["emails"] and "@" in text:
            text, n = _EMAIL.subn("<EMAIL>", text)
            counts["email"] = counts.get("email", 0) + n
        if self.p["ip_addresses"] and "." in text:
            n = 0

            def ip(m):
                nonlocal n
                if m.group(0) in _KEEP_IPS:
                    return m.group(0)
                n += 1
                return "<IP_ADDRESS>"

            text = _IPV4.sub(ip, text)
            text, n6 = _IPV6.subn("<IP_ADDRESS>", text)
            counts["ip_address"] = counts.get("ip_address", 0) + n + n6
        if self.p["secrets"]:
            total = 0
            for rx in _SECRETS:
                text, k = rx.subn("<SECRET>", text)
                total += k
            text, k = _ASSIGNED_SECRET.subn(r"\1<SECRET>\3", text)
            counts["secret"] = counts.get("secret", 0) + total + k
        doc["text"] = text
        return None


# ---------------------------------------------------------------- dedup (barriers)


class DedupStage(Stage):
    barrier = True

    def signature(self, doc: dict) -> np.ndarray:
        raise NotImplementedError

    def reduce(self, items) -> dict[str, str]:
        """items: (doc id, signature) in input order. Returns {dropped id: id of the kept duplicate}."""
        raise NotImplementedError

    def apply(self, doc):  # barriers never drop per document
        return None


class ExactDedup(DedupStage):
    type = "exact_dedup"
    sig_dtype = np.dtype("V16")

    def signature(self, doc):
        import xxhash

        return np.frombuffer(
            xxhash.xxh3_128_digest(doc["text"].encode("utf-8", "surrogatepass")), dtype="V16"
        )[0]

    def reduce(self, items):
        first: dict[bytes, str] = {}
        dropped: dict[str, str] = {}
        for doc_id, sig in items:
            key = bytes(sig)
            if key in first:
                dropped[doc_id] = first[key]
            else:
                first[key] = doc_id
        return dropped


class NearDedup(DedupStage):
    """MinHash signatures of word n-gram shingles, LSH (datasketch) at a Jaccard threshold. The first
    document of a cluster in input order is kept."""

    type = "near_dedup"
    defaults = {"threshold": 0.8, "num_perm": 128, "ngram": 5, "seed": 1, "lowercase": True}

    def __init__(self, name, only_sources=None, **params):
        super().__init__(name, only_sources, **params)
        if not 0.0 < float(self.p["threshold"]) < 1.0:
            raise ConfigError(f"near_dedup.threshold = {self.p['threshold']}: must be in (0, 1)")
        if int(self.p["num_perm"]) < 16:
            raise ConfigError(f"near_dedup.num_perm = {self.p['num_perm']}: must be >= 16")
        self.sig_dtype = np.dtype(("<u4", (int(self.p["num_perm"]),)))
        self._perms = None

    def _permutations(self):
        if self._perms is None:
            from datasketch import MinHash

            self._perms = MinHash(
                num_perm=int(self.p["num_perm"]), seed=int(self.p["seed"]), scheme="legacy"
            ).permutations
        return self._perms

    def shingle_hashes(self, text: str) -> np.ndarray:
        """32-bit hashes of the word n-grams: each distinct word hashed once (xxh32), n-gram hashes
        combined from word hashes with numpy."""
        import xxhash

        words = (text.lower() if self.p["lowercase"] else text).split()
        if not words:
            words = [""]
        index: dict[str, int] = {}
        inv = np.fromiter((index.setdefault(w, len(index)) for w in words), dtype=np.int64, count=len(words))
        uniq = list(index)
        wh = np.fromiter(
            (xxhash.xxh32_intdigest(w.encode("utf-8", "surrogatepass")) for w in uniq),
            dtype=np.uint64,
            count=len(uniq),
        )[inv]
        n = min(int(self.p["ngram"]), len(words))
        m = len(words) - n + 1
        h = np.zeros(m, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in range(n):
                h = h * np.uint64(0x100000001B3) + wh[k : k + m]
            h ^= h >> np.uint64(29)
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(32)
        return np.unique(h & np.uint64(0xFFFFFFFF))

    def signature(self, doc):
        hv = self.shingle_hashes(doc["text"])
        a, b = self._permutations()
        # datasketch's MinHash.update_batch (legacy scheme), without building a MinHash object per document
        mersenne, max_hash = np.uint64((1 << 61) - 1), np.uint64((1 << 32) - 1)
        with np.errstate(over="ignore"):
            phv = np.bitwise_and((np.outer(hv, a) + b) % mersenne, max_hash)
        return phv.min(axis=0).astype("<u4")

    def reduce(self, items):
        from datasketch import LeanMinHash, MinHashLSH

        lsh = MinHashLSH(threshold=float(self.p["threshold"]), num_perm=int(self.p["num_perm"]))
        dropped: dict[str, str] = {}
        for doc_id, sig in items:
            mh = LeanMinHash(seed=int(self.p["seed"]), hashvalues=sig.astype(np.uint64), scheme="legacy")
            match = lsh.query(mh)
            if match:
                dropped[doc_id] = min(match)  # deterministic: kept docs are inserted once, in order
            else:
                lsh.insert(doc_id, mh, check_duplication=False)
        return dropped


# ---------------------------------------------------------------- registry

STAGE_TYPES: dict[str, type[Stage]] = {
    cls.type: cls
    for cls in (
        Normalize,
        Length,
        GopherQuality,
        GopherRepetition,
        C4,
        CodeQuality,
        PII,
        ExactDedup,
        NearDedup,
    )
}


def _register_verify() -> None:
    from flopwise.data.verify import VerifyCode

    STAGE_TYPES[VerifyCode.type] = VerifyCode


def build_stage(cfg: StageConfig, where: str = "stage") -> Stage:
    if "verify_code" not in STAGE_TYPES:
        _register_verify()
    cls = STAGE_TYPES.get(cfg.type)
    if cls is None:
        raise ConfigError(f"{where}.type = {cfg.type!r}: must be one of {', '.join(STAGE_TYPES)}")
    params = dict(cfg.params)
    name = params.pop("name", cfg.type)
    only = params.pop("only_sources", None)
    unknown = set(params) - set(cls.defaults)
    if unknown:
        raise ConfigError(
            f"unknown key {where}.{sorted(unknown)[0]} for stage {cfg.type} "
            f"(allowed: {', '.join(sorted(cls.defaults) + ['name', 'only_sources'])})"
        )
    for k, v in params.items():
        d = cls.defaults[k]
        ok = (
            isinstance(v, bool)
            if isinstance(d, bool)
            else (isinstance(v, int | float) and not isinstance(v, bool))
            if isinstance(d, int | float)
            else isinstance(v, type(d))
        )
        if not ok:
            raise ConfigError(
                f"{where}.{k} = {v!r}: must be of type {type(d).__name__} like the default {d!r}"
            )
    try:
        return cls(name, only, **params)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
