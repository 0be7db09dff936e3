"""The table and ratios of benchmarks/serving_load.py: medians over rounds, targets as ratios."""

from __future__ import annotations

import argparse
import os
import platform
import statistics


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def summarise(results: list[dict], names: list[str], concurrency: list[int]) -> list[dict]:
    """One row per (server, concurrency): medians over rounds."""
    rows = []
    for name in names:
        for c in concurrency:
            points = [r for r in results if r["server"] == name and r["concurrency"] == c]
            if not points:
                continue
            row = {"server": name, "concurrency": c, "rounds": len(points)}
            for key in ("requests_per_s", "images_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_request", "mean_batch", "load_average_1m"):  # fmt: skip
                row[key] = _median([p.get(key) for p in points])
            row["errors"] = sum(p["errors"] for p in points)
            rows.append(row)
    return rows


def ratios(rows: list[dict], direct: list[dict], max_batch: int) -> dict[str, float]:
    def get(name: str, c: int, key: str) -> float | None:
        row = next((r for r in rows if r["server"] == name and r["concurrency"] == c), None)
        return row.get(key) if row else None

    out: dict[str, float] = {}
    direct_top = next((d["images_per_s"] for d in direct if d["batch"] == max_batch), None)
    pairs = {
        "clce c=32 / direct batch": (get("clce", 32, "images_per_s"), direct_top),
        "clce / litserve c=32": (get("clce", 32, "requests_per_s"), get("litserve", 32, "requests_per_s")),
        "clce / litserve c=64": (get("clce", 64, "requests_per_s"), get("litserve", 64, "requests_per_s")),
        "clce / plain c=32": (get("clce", 32, "requests_per_s"), get("plain", 32, "requests_per_s")),
        "clce / plain c=64": (get("clce", 64, "requests_per_s"), get("plain", 64, "requests_per_s")),
        "clce throughput c=64 / c=32": (get("clce", 64, "requests_per_s"), get("clce", 32, "requests_per_s")),
        "clce mean batch c=64 / c=32": (get("clce", 64, "mean_batch"), get("clce", 32, "mean_batch")),
        "clce p99 / p50 c=32": (get("clce", 32, "p99_ms"), get("clce", 32, "p50_ms")),
        "clce p99 / p50 c=64": (get("clce", 64, "p99_ms"), get("clce", 64, "p50_ms")),
    }
    for label, (a, b) in pairs.items():
        if a is not None and b:
            out[label] = round(a / b, 3)
    return out


def print_report(
    card: dict, args: argparse.Namespace, rows: list[dict], direct: list[dict], ratio: dict
) -> None:
    print()
    print(f"Model {card.get('model_name')} {card['input_size']}, device {args.device}, {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}), {args.images_per_request} JPEG(s) per request, "
          f"median of {args.rounds} interleaved round(s)")  # fmt: skip
    print()
    print(
        "| server | concurrency | req/s | images/s | p50 ms | p99 ms | errors | server CPU ms/req | mean batch | load avg |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['server']} | {r['concurrency']} | {r['requests_per_s']} | {r['images_per_s']} | {r['p50_ms']} | "
            f"{r['p99_ms']} | {r['errors']} | {r['server_cpu_ms_per_request']} | {r['mean_batch'] or ''} | "
            f"{r['load_average_1m']} |"
        )
    for d in direct:
        print(
            f"\ndirect ONNX Runtime (CLCE runtime), batch {d['batch']}: {d['images_per_s']:.1f} images/s "
            f"({d['median_ms_per_call']} ms per call)"
        )
    if direct:
        print(f"preprocessing ms per image (CLCE, one thread): {direct[0]['preprocess_ms_per_image']}")
    if ratio:
        print()
        for label, value in ratio.items():
            print(f"{label}: {value:.2f}x")
