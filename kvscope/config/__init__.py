"""User-facing configuration, pure Python (no torch, numpy or textual): what a user writes or names.

    model_config   ModelConfig, the one description of a decoder-only transformer's shape, and its parameter count
    model_presets  named shapes: published models for the estimators, tiny random-weight ones for the engine
    recipe         the recipe YAML (model, cache, scheduler, workload, sampling, deployment) and its validation
    sampling_params SamplingParams, the one validator of sampling rules (recipes, the offline API, HTTP)

Imports only kvscope.errors; everything that reads a recipe or a model shape sits above it.
"""
