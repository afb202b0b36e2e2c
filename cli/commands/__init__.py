"""One module per `kvscope` command, imported only when that command runs (so `kvscope kv` never
loads torch): run (headless, live), trace, replay, kv, roofline, bench, serve, attach, calibrate, capacity."""
