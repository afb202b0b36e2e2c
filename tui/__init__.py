"""The TUI (Textual): reads snapshots and events, and steers a run only through a RunController.

    app       KVScopeApp: the screen, its key bindings and reactive state
    model     UIModel: the folds the widgets render from
    screens   the modal screens; peaks: the roofline's device peaks
    widgets/  small renderables and widgets (bars, block map, batch timeline, request list, meters)
    panels/   the panels composed from them (scheduler, roofline, latency, device, info, speculation)

May import the inspector, the cost model, events and errors; never the engine or torch.
"""
