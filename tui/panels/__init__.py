"""The TUI's panels, each composed from widgets: scheduler, roofline (on the inspector's roofline grid),
latency, device, info, speculation and a deployment's other engines' block maps. Imports tui.widgets and the
inspector."""
