"""What a live run needs beside its folds: the run controller and device readings.

    controller    RunController (pause / step / delay / state), and SessionController, which runs a RunSession
                  in a worker thread
    device_stats  GPU memory, utilisation and power (nvidia-ml-py), or process RSS and CPU
    peak_probe    measured device peaks for the roofline (torch, imported only when asked)

Imports events and the cost model.
"""
