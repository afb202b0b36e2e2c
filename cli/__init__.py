"""The `kvscope` command (typer): wires recipes and arguments to the engine, the inspector, the TUI and the
server, and turns every KVScopeError into one line and exit code 2.

    main / app   the entry point and the command tree; errors, console: one-line errors, rich output
    recipe_args / oneshot_args   a recipe or a model named on the command line
    progress / text_probe        progress bars; the text probe that decodes what a run generates
    summary_table / bench_table / deployment_report   the tables it prints
    commands/    one module per command (run, trace, replay, kv, roofline, bench, serve, attach, ...)

The top layer: may import everything below it.
"""
