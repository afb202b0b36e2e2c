"""What the commands that take a recipe share: a label for its model, and the header of a recording of its
run. (The recipe itself is read by kvscope.config.recipe.load_recipe: every problem one line.)"""

from __future__ import annotations

from typing import Any

from kvscope.config.recipe import Recipe
from kvscope.inspector.export.recording import make_header


def model_label(recipe: Recipe) -> str:
    """What a progress bar calls the recipe's model while it loads: 'smollm2', 'random tiny', ..."""
    model = recipe.model
    if model.source == "preset":
        return f"{model.name} (simulated: no weights)"
    return f"random {model.shape}" if model.source == "random" else model.path


def recipe_header(recipe: Recipe, device: str) -> dict[str, Any]:
    """The recording header (kvscope.inspector.export.recording.make_header) of a run of `recipe` on `device`."""
    return make_header(recipe.raw | {"name": recipe.name}, device, recipe_path=recipe.source)
