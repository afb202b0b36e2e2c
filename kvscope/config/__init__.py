"""User-facing configuration, pure Python (no torch, numpy or textual): what a user writes or names.

    model_config     ModelConfig, the one description of a decoder-only transformer's shape, and its parameter count
    model_presets    named shapes: published models for the estimators, tiny random-weight ones for the engine
    recipe           the recipe YAML (pydantic models: Recipe), its rules across sections, its variants
    recipe_sections  its sections (cache, scheduler, speculative, deployment, sim, workload)
    recipe_fields    what the sections are made of: Section, field types that say what they expect, one-line errors
    model_spec       a recipe's `model`, one spec per source (random, gguf, hf, preset)
    sampling_params  SamplingParams, the one validator of sampling rules (recipes, the offline API, HTTP)

Imports kvscope.errors, pydantic and yaml; everything that reads a recipe or a model shape sits above it. The
one-shot commands read model_config and model_presets only (the recipe modules and pydantic's schemas stay off
their path).
"""
