"""The TUI's building blocks: bars and text lines (rich renderables), the block map, the batch timeline,
the request list and the KV meters. Imports the inspector's folds and nothing of the panels."""
