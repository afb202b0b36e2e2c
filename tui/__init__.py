"""The TUI (Textual): reads snapshots and events, and steers a run only through a RunController.

    app       KVScopeApp: the screen, its key bindings and its reactive state (the model shown, the selection,
              the run state, the delay, the replay's position), whose watchers steer the run and redraw
    model     UIModel: the folds the widgets render from
    screens   the modal screens; peaks: the roofline's device peaks
    widgets/  small renderables and widgets (bars, block map, batch timeline, request list, meters, status line)
    panels/   the panels composed from them (scheduler, roofline, latency, device, info, speculation, the
              deployment's other engines' maps)

May import the inspector, the cost model, events and errors; never the engine or torch.
"""
