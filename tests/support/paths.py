"""The repository's folders, as the tests reach them."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPES = REPO_ROOT / "recipes"
BENCHMARKS = REPO_ROOT / "benchmarks"
