"""Torch reference kernels: the oracles every fast kernel is tested against, and the fallback where
no fast one applies. Imports torch only."""
