"""Measurements: perplexity, agreement with the original model, latency and throughput."""
