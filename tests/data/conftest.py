import json
import random

import pytest

WORDS = (
    "the of and to in that have with be a is for on it as this are was by from at or an "
    "alpha beta gamma delta model data train token river mountain forest ocean city music"
).split()


def prose(rng: random.Random, sentences: int = 8) -> str:
    return " ".join(
        " ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "." for _ in range(sentences)
    )


@pytest.fixture
def prose_corpus(tmp_path):
    """A JSONL corpus of 120 prose documents, 2 exact duplicates, 1 near duplicate, bad lines."""
    rng = random.Random(0)
    docs = [prose(rng) for _ in range(120)]
    lines = [json.dumps({"id": i, "text": t}) for i, t in enumerate(docs)]
    lines.append(json.dumps({"id": "dup1", "text": docs[3]}))
    lines.append(json.dumps({"id": "dup2", "text": docs[7]}))
    words = docs[10].split()
    words[5] = "zebra"
    lines.append(json.dumps({"id": "near1", "text": " ".join(words)}))
    lines.append("{this is not json")
    lines.append(json.dumps({"id": "short", "text": "Too short."}))
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "a.jsonl").write_text("\n".join(lines[:70]) + "\n")
    (src / "b.jsonl").write_text("\n".join(lines[70:]) + "\n")
    return src, docs


def write_config(path, body: str):
    path.write_text(body)
    return path
