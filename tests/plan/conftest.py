from pathlib import Path

import pytest

# CI clones the repository with shared/ beside it: <repo>/../shared/published
PUBLISHED = Path(__file__).resolve().parents[2] / ".." / "shared" / "published"


@pytest.fixture
def published() -> Path:
    if not PUBLISHED.is_dir() or not list(PUBLISHED.glob("*.csv")):
        pytest.skip(
            f"published runs not found at {PUBLISHED.resolve()} (shared/ must sit beside the repository)"
        )
    return PUBLISHED
