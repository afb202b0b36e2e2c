"""What the tests share: the oracles (transformers on the same weights), scripted drafters, trace checks, the
repository's paths and waiting on a condition. Tests import it as `support` (tests/ is on pytest's path)."""
