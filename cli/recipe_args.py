"""Shared CLI plumbing for commands that take a recipe: the argument and its loading."""

from __future__ import annotations

import argparse

from kvscope.engine.recipe import Recipe, load_recipe


def add_recipe_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML (see recipes/)")


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    return load_recipe(args.recipe)
