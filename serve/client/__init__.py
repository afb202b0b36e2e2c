"""Clients of an HTTP server (kvscope's or vLLM's): the attach client behind `kvscope attach` and the load
generator behind `kvscope bench serve` (dataset, streaming client, metrics scrape, report), and the API-key
header they send (auth_header). They talk HTTP only: nothing here imports serve.server or the engine."""
