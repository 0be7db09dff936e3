"""Runnable measurements of the product, one module each: ``python -m benchmarks.NAME`` from the repository root.

Every benchmark prints a Markdown table and writes JSON (and, for some, PNG) under
``benchmarks/results/``; what they share (machine line, load, memory, timing, publishing, a server
process, data paths) lives in :mod:`benchmarks.harness`. ``benchmarks/README.md`` lists each one with
its command and its latest figures. Not part of the wheel: nothing in ``clce_core``, ``training`` or
``serving`` imports this package.
"""
