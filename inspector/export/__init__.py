"""Exporters: the event stream as files and pictures, and back.

    chrome_trace / deployment_trace / trace_clock   Chrome Trace Event JSON for Perfetto (one process per engine)
    nvtxt            the NVTX text format Nsight Systems imports
    recording        JSONL recordings (a writer on the bus, a reader); replay: a cursor over one
    timeline_svg     batch timelines as SVG; ascii_plot: the terminal roofline plot

Imports the inspector's folds, events and errors.
"""
