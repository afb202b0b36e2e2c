"""The TUI's building blocks: bars and text lines (rich renderables), the block map, the batch timeline,
the request list, the KV meters and the status line. Imports the inspector (its folds, units and the run's
state names) and nothing of the panels."""
