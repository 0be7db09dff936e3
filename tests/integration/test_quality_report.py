"""The quality report's paired comparisons, on hand-made rows (no training)."""

from __future__ import annotations

from benchmarks.quality_report import comparison_rows, markdown, verdict


def _glyph_rows() -> list[dict]:
    """Two seeds: CLCE is best in 1-shot, CE with random batches in 5-shot."""
    rows = []
    for seed in (0, 1):
        rows.append({"suite": "glyphs", "setting": "frozen", "loss": "frozen", "batches": "—", "seed": seed,
                     "prototype_1shot": 70.0 + seed, "prototype_5shot": 85.0 + seed})  # fmt: skip
        rows.append({"suite": "glyphs", "setting": "batch 64", "loss": "clce", "batches": "balanced",
                     "seed": seed, "prototype_1shot": 80.0 + seed, "prototype_5shot": 88.0 + seed})  # fmt: skip
        rows.append({"suite": "glyphs", "setting": "batch 64", "loss": "ce", "batches": "random",
                     "seed": seed, "prototype_1shot": 75.0 + seed, "prototype_5shot": 90.0 + 2 * seed})  # fmt: skip
    return rows


def test_the_best_fine_tuned_side_is_named_for_each_metric() -> None:
    rows = _glyph_rows()
    ((_, diffs, sides),) = comparison_rows(rows, "glyphs", "batch 64", [("best − floor", "best", "floor")])
    assert diffs == {"prototype_1shot": [10.0, 10.0], "prototype_5shot": [5.0, 6.0]}
    assert sides == {
        "prototype_1shot": "clce − frozen encoder",
        "prototype_5shot": "ce, random batches − frozen encoder",
    }
    table = markdown(rows, "header")
    assert (
        "| best fine-tuned − floor | 1-shot: clce − frozen encoder; 5-shot: ce, random batches − frozen encoder |"
        in table
    )
    assert "best fine-tuned − floor +10.00" in verdict(rows, "glyphs", "batch 64")
    assert "(one seed" not in verdict(rows, "glyphs", "batch 64")
    assert "; clce − frozen encoder)." in verdict(rows, "glyphs", "batch 64")  # the 1-shot side, not 5-shot's
