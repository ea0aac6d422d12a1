"""Helpers for file names."""

from pathlib import Path


def stem_and_suffix(name: str) -> tuple[str, str]:
    """Split a file name into its stem and its suffix, e.g. ("report", ".txt")."""
    path = Path(name)
    return path.stem, path.suffix


def with_suffix(name: str, suffix: str) -> str:
    """The same name with another suffix."""
    return str(Path(name).with_suffix(suffix))
