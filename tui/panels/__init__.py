"""The TUI's panels, each composed from widgets: scheduler, roofline, latency, device, info and
speculation. Imports tui.widgets and the inspector."""
