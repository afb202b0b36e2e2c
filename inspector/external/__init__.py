"""What a server tells an outsider, without kvscope's plugin: folds over vLLM's `/metrics` and its KV events.

    prometheus    a Prometheus text exposition parsed once (totals, labels, histograms) and histogram quantiles
                  (Prometheus's histogram_quantile: linear within the bucket)
    vllm_metrics  vLLM's metric names (today's and the older `gpu_*` ones) and the fold of successive scrapes
                  into one reading: queues, KV usage, prefix hit rate, preemptions, tokens/s, and TTFT / ITL /
                  E2E quantiles from the histograms' deltas since attach
    kv_events     vLLM's KV-event batches decoded (msgpack: the tagged-map and the older positional encoding)
                  and folded into the set of cached blocks by content hash

Pure Python (msgpack, prometheus_client's parser); the HTTP and ZMQ clients that feed these live in
kvscope.serve.client. What none of this can know: physical block ids, owners, per-step composition.
"""
