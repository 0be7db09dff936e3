"""The Markdown report of a ``gpu_check`` run: a heading and a table per section, skips and failures said."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

TITLES = {
    "train_steps": "Fine-tuning steps",
    "losses": "Loss speed",
    "inference": "Export and inference",
    "serving": "Serving under load",
    "quickstart": "Quick start end to end",
}


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def train_steps(s: dict[str, Any]) -> list[str]:
    lines = [
        f"AMP {s['amp']}, random weights, {s['img_size']} px, median of {s['repeats']} `train_step` after "
        f"{s['warmup']} warm-up; peak: {s['peak_memory']} over the configuration (model, AdamW, batch, steps).",
        "",
        "| model | config | rows | median step (ms) | images/s | × CE 2 views | × CE 1 view | chunked / one pass | peak (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in s["rows"]:
        step = _ms(r.get("median_ms")) if r["fits"] else "does not fit"
        rate = f"{r['images_per_s']:.1f}" if r["fits"] else "–"
        lines.append(
            f"| {r['model']} | {r['config']} | {r['rows']} | {step} | {rate} | {_x(r.get('x_ce_2views'))} | "
            f"{_x(r.get('x_ce_1view'))} | {_x(r.get('x_one_pass'))} | {r['peak_mib']:.0f} |"
        )
    return lines


def losses(s: dict[str, Any]) -> list[str]:
    return [s["table"]]


def inference(s: dict[str, Any]) -> list[str]:
    lines = [
        f"encoder + head, {s['img_size']} px, random weights, median of {s['repeats']} calls, numpy in and out.",
        "",
        "| model | runtime | batch | median (ms) | images/s | × eager |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in s["rows"]:
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['batch']} | {r['median_ms']:.2f} | {r['images_per_s']:.1f} | "
            f"{_x(r['x_eager'])} |"
        )
    for model, notes in s["notes"].items():
        for name, note in notes.items():
            if isinstance(note, dict) and note.get("status") == "skipped":
                lines.append(f"- {model}, {name}: skipped ({note['reason']})")
        lines.append(f"- {model}: active providers {notes['providers']}")
    return lines


def serving(s: dict[str, Any]) -> list[str]:
    lines = [
        f"`python -m serving {s['device_setting'].split(' (')[0]}` on the {s['model']} fp32 export, "
        "one JPEG per request, `benchmarks.load_client.drive`.",
        "",
        "| batching | concurrency | requests | req/s | images/s | p50 (ms) | p99 (ms) | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in s["points"]:
        lines.append(
            f"| {p['batching']} (max {p['max_batch']}) | {p['concurrency']} | {p['requests']} | "
            f"{p['requests_per_s']:.1f} | {p['images_per_s']:.1f} | {p['p50_ms']} | {p['p99_ms']} | {p['errors']} |"
        )
    for d in s["direct"]:
        lines.append(
            f"- ONNX sessions alone, batch {d['batch']}: {d['images_per_s']:.1f} images/s ({d['providers']})"
        )
    lines.append(
        f"- batching on / off at the top concurrency: {_x(s['batching_gain'])}; "
        f"server / sessions alone: {_x(s['server_vs_direct'])}"
    )
    for batching, ready in s["ready"].items():
        body = ready["body"]
        cuda = (
            f", CUDA provider reported: {ready['cuda_reported']}"
            if "cuda_reported" in ready
            else " (CPU run)"
        )
        lines.append(
            f"- /health/ready (batching {batching}): {ready['status_code']}, device {body.get('device')}, "
            f"providers {body.get('providers')}{cuda}"
        )
    return lines


def quickstart(s: dict[str, Any]) -> list[str]:
    train, ready, classify = s["finetune"], s["ready"], s["classify"]
    last = next((m for m in reversed(train["metrics"]) if "val_top1" in m), {})
    test = next((m for m in train["metrics"] if "test_top1" in m), {})
    body = ready["body"]
    return [
        "| step | seconds | outcome |",
        "|---|---:|---|",
        f"| fine-tune ({train['data']}) | {train['seconds']:.1f} | {len(train['metrics'])} metrics lines; "
        f"val top-1 {last.get('val_top1', '–')}, test top-1 {test.get('test_top1', '–')}, "
        f"{last.get('images_per_s', 0):.1f} img/s |",
        f"| export | {s['export']['seconds']:.1f} | {s['export']['precision']}, {s['export']['labels']} labels |",
        f"| serve | {ready['seconds_to_ready']:.1f} | /health/ready {ready['status_code']}, providers "
        f"{body.get('providers')}{', CUDA reported: ' + str(ready['cuda_reported']) if 'cuda_reported' in ready else ''} |",
        f"| classify | | POST /classify {classify['status_code']}, top-1 {classify['top1']} |",
    ]


RENDER: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "train_steps": train_steps,
    "losses": losses,
    "inference": inference,
    "serving": serving,
    "quickstart": quickstart,
}


def markdown(results: dict[str, Any]) -> str:
    """The whole report: the machine line, then each section's heading, status and table."""
    cap = results["memory_cap"]
    lines = [
        f"# GPU check ({'smoke, CPU' if results['plan']['smoke'] else 'full'})",
        "",
        f"Machine: {results['machine']}. Memory cap: {cap}. One run; {results['seconds']:.0f} s in all.",
    ]
    for name, section in results["sections"].items():
        lines += ["", f"## {TITLES[name]}", ""]
        if section["status"] == "skipped":
            lines.append(f"_skipped: {section['reason']}_")
        elif section["status"] == "failed":
            lines.append(f"**failed** after {section['seconds']} s: {section['reason'].splitlines()[0]}")
        else:
            lines += [*RENDER[name](section), "", f"({section['seconds']} s)"]
    return "\n".join(lines) + "\n"
