"""Small text statistics: word counts and the most common words of a text."""

from collections import Counter


def words(text: str) -> list[str]:
    """The lower-cased words of `text`, punctuation stripped."""
    return [w.strip(".,;:!?\"'()").lower() for w in text.split() if w.strip(".,;:!?\"'()")]


def most_common(text: str, n: int = 5) -> list[tuple[str, int]]:
    """The `n` most frequent words with their counts."""
    return Counter(words(text)).most_common(n)
