"""Pipeline stages, one family per module, on one base that counts (base.py).

Stage types and their parameters (all optional):
  normalize          nfc, ftfy, strip_control                                          normalize.py
  length             min_chars, max_chars, min_words, max_words                        quality.py
  gopher_quality     min_words, max_words, min_mean_word_len, max_mean_word_len, max_symbol_word_ratio,
                     max_bullet_lines, max_ellipsis_lines, min_alpha_words, min_stop_words
  gopher_repetition  max_dup_line_frac, max_dup_para_frac, max_dup_line_char_frac, max_dup_para_char_frac,
                     top_ngram_char_frac {2,3,4}, dup_ngram_char_frac {5..10}
  c4                 min_words_per_line, min_sentences, drop_lorem_ipsum, drop_curly_brace, line filters
  code_quality       max_line_length, max_mean_line_length, min_alnum_frac, generated_markers, marker_chars
  pii                emails, ip_addresses, secrets (placeholders <EMAIL>, <IP_ADDRESS>, <SECRET>)  pii.py
  exact_dedup        (content hash; keeps the first occurrence in input order)       dedup.py
  near_dedup         threshold, num_perm, ngram, seed (MinHash-LSH with datasketch)
  verify_code        tests run against code in a sandbox                              verify.py
Every stage also takes `name` (for reports) and `only_sources` (names of sources it applies to).
"""

from flopwise.data.stages.base import Stage, StageStats
from flopwise.data.stages.dedup import DedupStage
from flopwise.data.stages.registry import STAGE_TYPES, Segment, build_stage, segments

__all__ = ["STAGE_TYPES", "DedupStage", "Segment", "Stage", "StageStats", "build_stage", "segments"]
