"""Shared CLI plumbing for commands that take a recipe: the argument, its loading, and the header of a
recording of its run."""

from __future__ import annotations

import argparse
from typing import Any

from kvscope.engine.recipe import Recipe, load_recipe
from kvscope.inspector.recording import make_header


def add_recipe_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML (see recipes/)")


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    return load_recipe(args.recipe)


def recipe_header(recipe: Recipe, device: str) -> dict[str, Any]:
    """The recording header (kvscope.inspector.recording.make_header) of a run of `recipe` on `device`."""
    return make_header(recipe.raw | {"name": recipe.name}, device, recipe_path=recipe.source)
