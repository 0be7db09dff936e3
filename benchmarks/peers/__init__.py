"""The servers benchmarks/serving_load.py compares the CLCE server with (run as ``python -m benchmarks.peers.NAME``)."""
