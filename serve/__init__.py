"""HTTP: kvscope's server in vLLM's dialect, and, apart from it, its clients.

    server/  `kvscope serve`: the OpenAI-compatible endpoints (FastAPI + uvicorn), Prometheus metrics and the
             event stream that `kvscope attach` opens the TUI over
    client/  the clients: `kvscope attach`'s RemoteController and `kvscope bench serve`'s load generator

The two never import each other (they speak HTTP). serve may import the inspector and everything below it;
only the cli imports serve.
"""
