"""What the commands that take a recipe share: the model --model-override NAME stands for, a label for its
model, and the header of a recording of its run. (The recipe itself is read by kvscope.config.recipe.load_recipe:
every problem one line.)"""

from __future__ import annotations

from typing import Any

from kvscope.cli.errors import UsageError
from kvscope.config.recipe import Recipe
from kvscope.inspector.export.recording import make_header

# --model-override names: a random-weight shape (fast, for tests) or the real SmolLM2 GGUF.
REAL_MODEL = "smollm2"
RANDOM_ALIASES = {"smollm2-135m-random": "smollm2-135m"}


def model_override(name: str) -> dict[str, Any]:
    """The recipe `model` mapping that --model-override NAME stands for (UsageError if unknown)."""
    from kvscope.engine.model.support import runnable_presets

    if name == REAL_MODEL:
        return {"source": "gguf", "path": REAL_MODEL}
    shape, runnable = RANDOM_ALIASES.get(name, name), runnable_presets()
    if shape not in runnable:
        known = ", ".join([REAL_MODEL, *runnable, *sorted(RANDOM_ALIASES)])
        raise UsageError(f"--model-override: unknown model {name!r} (known: {known})")
    return {"source": "random", "shape": shape, "seed": 0}


def model_label(recipe: Recipe) -> str:
    """What a progress bar calls the recipe's model while it loads: 'smollm2', 'random tiny', ..."""
    model = recipe.model
    if model.source == "preset":
        return f"{model.name} (simulated: no weights)"
    return f"random {model.shape}" if model.source == "random" else model.path


def recipe_header(recipe: Recipe, device: str) -> dict[str, Any]:
    """The recording header (kvscope.inspector.export.recording.make_header) of a run of `recipe` on `device`."""
    return make_header(recipe.raw | {"name": recipe.name}, device, recipe_path=recipe.source)
