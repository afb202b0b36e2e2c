"""Errors the engine raises for bad input; the CLI prints them as one line and exits with code 2."""


class KVScopeError(Exception):
    """Base of every user-facing error: the message names what is wrong and where."""


class RecipeError(KVScopeError):
    """A recipe that cannot be used: malformed YAML, unknown key, bad value, impossible sizes."""


class ModelLoadError(KVScopeError):
    """A model that cannot be loaded: missing, corrupt or unsupported file."""


class RequestError(KVScopeError):
    """A request the engine cannot serve (e.g. prompt longer than the context)."""


class ModelShapeError(KVScopeError, ValueError):
    """A model that cannot be described: unknown preset, bad file, missing or impossible field."""


class EngineDied(RuntimeError):
    """An engine of a deployment is gone (its Ray actor killed or crashed)."""
