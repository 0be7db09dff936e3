"""python -m training.evaluate on a tiny checkpoint and a tiny class folder (CPU, seconds)."""

from __future__ import annotations

import collections
import json
import logging
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.harness import glyphs_dir
from clce_core.fewshot import evaluate_episodes
from training import evaluate, evaluation, finetune
from training.embed import embed_and_classify, load_class_set, load_encoder, save_embeddings
from training.report import tsne_subsample
from training.transforms import eval_transform

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (128, 128, 128), (200, 200, 30), (30, 200, 200)]
CLASSES = [f"c{i}" for i in range(len(COLOURS))]
PER_CLASS = 8
LINE = re.compile(r"^5-way 1-shot: \d{1,3}\.\d{2} ± \d+\.\d{2} \(20 episodes, 2 queries\)$", re.M)
GLYPHS = glyphs_dir(check=False) / "novel"  # $CLCE_GLYPHS_DIR
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def class_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 class folders × 8 noisy colour squares."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for name, colour in zip(CLASSES, COLOURS, strict=True):
        (root / name).mkdir()
        for i in range(PER_CLASS):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (40, 40, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def checkpoints(class_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CE and a CLCE checkpoint trained (one step) on the classes of ``class_dir``."""
    out = tmp_path_factory.mktemp("runs")
    paths = {}
    for loss, per_class in (("ce", "0"), ("clce", "2")):
        args = [
            "--dataset", "imagefolder", "--data-dir", str(class_dir), "--model", "test_efficientnet",
            "--pretrained", "none", "--img-size", "32", "--batch-size", "8", "--per-class", per_class,
            "--epochs", "1", "--max-steps-per-epoch", "1", "--workers", "0", "--loss", loss,
            "--output", str(out / loss),
        ]  # fmt: skip
        assert finetune.main(args) == 0
        paths[loss] = out / loss / "best.pt"
    return paths


def _episodes(*extra: str) -> list[str]:
    return ["--ways", "5", "--shots", "1", "--queries", "2", "--episodes", "20", "--workers", "0", *extra]


def _is_png(path: Path) -> bool:
    if not path.is_file() or path.read_bytes()[:8] != PNG_MAGIC:
        return False
    with Image.open(path) as im:
        im.verify()
    return True


@pytest.mark.slow
def test_checkpoint_prints_the_contract_line_and_writes_json(
    checkpoints: dict[str, Path], class_dir: Path, tmp_path: Path, capsys
) -> None:
    out, emb_dir = tmp_path / "results.json", tmp_path / "emb"
    args = ["--checkpoint", str(checkpoints["clce"]), "--data-dir", str(class_dir), *_episodes()]
    assert evaluate.main([*args, "--output", str(out), "--save-embeddings", str(emb_dir)]) == 0
    printed = capsys.readouterr().out
    assert len(LINE.findall(printed)) == 1
    assert re.search(r"^top-1: \d+\.\d{2}  top-5: \d+\.\d{2}  \(48 images, 6 classes\)$", printed, re.M)
    assert "per-class accuracy" in printed and all(f"  {c} " in printed for c in CLASSES)

    results = json.loads(out.read_text())
    assert results["class_set"]["num_classes"] == 6 and results["class_set"]["num_images"] == 48
    assert results["config"]["episodes"] == 20 and results["config"]["checkpoint"] == str(checkpoints["clce"])
    (model,) = results["models"]
    assert model["checkpoint"] == str(checkpoints["clce"]) and model["embedding_dim"] == 256
    (fs,) = model["fewshot"]
    assert (fs["n_way"], fs["k_shot"], fs["n_query"], fs["n_episodes"]) == (5, 1, 2, 20)
    assert fs["line"] in printed and 0 <= fs["mean"] <= 100
    cls = model["classification"]
    assert set(cls["per_class"]) == set(CLASSES)
    assert np.asarray(cls["confusion_matrix"]).shape == (6, 6) and np.sum(cls["confusion_matrix"]) == 48
    assert 0 < model["isotropy"] <= 1

    # The dump reproduces the printed number: the episodes are a pure function of embeddings + seed.
    emb, labels = np.load(emb_dir / "embeddings.npy"), np.load(emb_dir / "labels.npy")
    assert emb.shape == (48, 256) and emb.dtype == np.float32 and labels.shape == (48,)
    assert json.loads((emb_dir / "classes.json").read_text()) == CLASSES
    assert len((emb_dir / "paths.txt").read_text().splitlines()) == 48
    again = evaluate_episodes(emb, labels, 5, 1, 2, 20, seed=0)
    assert str(again) == fs["line"]


@pytest.fixture(scope="module")
def single_report(
    checkpoints: dict[str, Path], class_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    report = tmp_path_factory.mktemp("report")
    args = ["--checkpoint", str(checkpoints["ce"]), "--data-dir", str(class_dir), "--report", str(report)]
    assert evaluate.main([*args, *_episodes("--report-classes", "c1", "c4", "--tsne-points", "24")]) == 0
    return report


@pytest.mark.slow
def test_report_writes_valid_pngs_and_markdown(single_report: Path) -> None:
    for name in ("similarity_classes.png", "similarity_all.png", "tsne.png", "confusion.png"):
        assert _is_png(single_report / name), name
    md = (single_report / "report.md").read_text()
    assert all(f"]({name})" in md for name in ("similarity_classes.png", "tsne.png", "confusion.png"))
    assert "| 5-way 1-shot |" in md and "Isotropy" in md and "c1, c4" in md and "24 images of" in md
    sim = json.loads((single_report / "results.json").read_text())["models"][0]["similarity"]
    assert sim["report_classes"] == ["c1", "c4"]
    assert sim["classes"]["positive_pairs"] == 2 * (PER_CLASS * (PER_CLASS - 1) // 2)


@pytest.mark.slow
def test_compare_draws_two_panels(
    checkpoints: dict[str, Path], class_dir: Path, single_report: Path, tmp_path: Path, capsys
) -> None:
    both = tmp_path / "both"
    pair = [str(checkpoints["ce"]), str(checkpoints["clce"])]
    args = ["--compare", *pair, "--report", str(both), "--data-dir", str(class_dir), "--tsne-points", "24"]
    assert evaluate.main([*args, *_episodes("--save-embeddings", str(tmp_path / "emb"))]) == 0
    printed = capsys.readouterr().out
    assert len(LINE.findall(printed)) == 2 and "[ce]" in printed and "[clce]" in printed
    for name in ("similarity_all.png", "tsne.png", "confusion.png"):
        assert _is_png(both / name)
        with Image.open(single_report / name) as a, Image.open(both / name) as b:
            assert b.width > 1.6 * a.width, name  # two panels side by side
    md = (both / "report.md").read_text()
    assert "| setting | ce | clce |" in md
    assert len(json.loads((both / "results.json").read_text())["models"]) == 2
    assert (tmp_path / "emb" / "ce" / "embeddings.npy").is_file()
    assert (tmp_path / "emb" / "clce" / "embeddings.npy").is_file()


@pytest.mark.slow
def test_frozen_encoder_and_logreg(class_dir: Path, tmp_path: Path, capsys) -> None:
    """--model: no head, so no top-1; --classifier logreg goes through evaluate_episodes' callable."""
    out = tmp_path / "r.json"
    frozen = ["--model", "test_efficientnet", "--pretrained", "none", "--img-size", "32"]
    args = [*frozen, "--data-dir", str(class_dir), *_episodes("--classifier", "logreg", "--output", str(out))]
    assert evaluate.main(args) == 0
    printed = capsys.readouterr().out
    assert len(LINE.findall(printed)) == 1 and "top-1" not in printed
    model = json.loads(out.read_text())["models"][0]
    assert model["classification"] is None and model["checkpoint"] is None


@pytest.mark.slow
def test_simpleshot_centres_on_the_base_classes(class_dir: Path, tmp_path: Path, capsys) -> None:
    """--classifier simpleshot embeds --base-data-dir once and passes its mean to the episodes; the
    printed accuracy is the one evaluate_episodes gives with that mean."""
    frozen = ["--model", "test_efficientnet", "--pretrained", "none", "--img-size", "32"]
    out = tmp_path / "r.json"
    args = [*frozen, "--data-dir", str(class_dir), "--base-data-dir", str(class_dir)]
    torch.manual_seed(0)  # the same random weights for the CLI's encoder and the one built below
    assert evaluate.main([*args, *_episodes("--classifier", "simpleshot", "--output", str(out))]) == 0
    printed = float(LINE.findall(capsys.readouterr().out)[0].split(": ")[1].split(" ")[0])
    torch.manual_seed(0)
    enc = load_encoder(None, "test_efficientnet", "none", 32)
    class_set = load_class_set(data_dir=class_dir)
    emb = json.loads(out.read_text())["models"][0]
    assert emb["fewshot"][0]["mean"] == printed
    embeddings, _ = embed_and_classify(
        enc.model, class_set.dataset, transform=eval_transform(enc.data_config), show_progress=False
    )
    want = evaluate_episodes(embeddings, class_set.targets, 5, 1, 2, 20, 0, classifier="simpleshot",
                             base_mean=embeddings.mean(0))  # fmt: skip
    assert round(want.mean, 2) == printed
    assert evaluate.main([*frozen, "--data-dir", str(class_dir), *_episodes("--classifier", "simpleshot")]) == 2
    assert "--base-data-dir" in capsys.readouterr().err


def test_classes_are_matched_by_name() -> None:
    """Head classes in another order, or more of them: top-1 still right; disjoint: none."""
    head = ["a", "b", "c", "d"]
    logits = np.eye(4)[[2, 0, 1, 3]]  # image i predicted as head class [c, a, b, d][i]
    labels = np.array([0, 1, 2, 2])  # evaluated classes c, a, b -> c, a, b, (other)
    cls = evaluation.classify_with_head(logits, labels, ["c", "a", "b"], head)
    assert cls is not None and cls.top1 == 75.0 and cls.columns == ["c", "a", "b", "(other)"]
    assert cls.confusion.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]]
    np.testing.assert_allclose(cls.per_class, [100, 100, 50])
    assert evaluation.classify_with_head(logits, labels, ["x", "y", "z"], head) is None


def test_npz_dump_and_tsne_subsample(tmp_path: Path) -> None:
    emb, labels = np.ones((6, 3), np.float32), np.array([0, 0, 1, 1, 2, 2])
    path = save_embeddings(tmp_path / "e.npz", emb, labels, ["x", "y", "z"])
    with np.load(path) as f:
        assert f["embeddings"].shape == (6, 3) and f["classes"].tolist() == ["x", "y", "z"]
    idx = tsne_subsample(np.repeat(np.arange(30), 100), max_points=500, max_classes=20, seed=0)
    assert len(idx) == 500 and len(np.unique(np.repeat(np.arange(30), 100)[idx])) <= 20


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("corrupt", "corrupt"),
        ("empty", "no images"),
        ("short", "need 5 classes with at least 20 images each"),
        ("report-class", "--report-classes: nope"),
        ("img-size", "--img-size"),
        ("device", "--device 'gpu0' is not a device"),
        ("no-data-dir", "does not exist"),
        ("pickle", "holds pickled Python objects, which are never loaded"),
        ("text", "corrupt or not a PyTorch checkpoint"),
        ("ways", "--ways 200 --shots 1 --queries 2: 200-way episodes need 200 classes"),
        ("one-way", "--ways must be at least 2, got 1"),
    ],
)
def test_bad_input_gives_one_line_error(
    case: str, message: str, checkpoints: dict[str, Path], class_dir: Path, tmp_path: Path, capsys
) -> None:
    ckpt, data, extra = str(checkpoints["ce"]), str(class_dir), _episodes()
    if case == "missing":
        ckpt = str(tmp_path / "nope.pt")
    elif case == "corrupt":
        (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
        ckpt = str(tmp_path / "bad.pt")
    elif case == "empty":
        (tmp_path / "empty" / "some_class").mkdir(parents=True)
        data = str(tmp_path / "empty")
    elif case == "short":
        extra = ["--shots", "5", "--queries", "15", "--workers", "0"]
    elif case == "report-class":
        extra += ["--report", str(tmp_path / "r"), "--report-classes", "nope"]
    elif case == "device":
        extra += ["--device", "gpu0"]
    elif case == "no-data-dir":
        data = str(tmp_path / "no-such-folder")
    elif case == "pickle":  # any pickle: torch.load's refusal advises the unsafe weights_only=False
        (tmp_path / "model.pkl").write_bytes(pickle.dumps(collections.OrderedDict(w=[1.0])))
        ckpt = str(tmp_path / "model.pkl")
    elif case == "text":  # torch.load raised a bare KeyError here (a traceback)
        (tmp_path / "notes.pt").write_text("hello\n")
        ckpt = str(tmp_path / "notes.pt")
    elif case in ("ways", "one-way"):
        extra[extra.index("--ways") + 1] = "200" if case == "ways" else "1"
    else:
        extra += ["--img-size", "64"]
    assert evaluate.main(["--checkpoint", ckpt, "--data-dir", data, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "Traceback" not in err
    assert message in err
    assert "weights_only" not in err and "n_way" not in err and "k_shot" not in err and "short: ." not in err
    if case == "no-data-dir":
        assert "not a folder of class folders" not in err


def test_a_checkpoint_is_not_reported_as_random_weights(
    checkpoints: dict[str, Path], class_dir: Path, caplog
) -> None:
    caplog.set_level(logging.INFO)
    args = ["--checkpoint", str(checkpoints["ce"]), "--data-dir", str(class_dir), *_episodes()]
    assert evaluate.main(args) == 0
    assert "weights: random" not in caplog.text
    assert f"loaded test_efficientnet from {checkpoints['ce']} (epoch 1, D=" in caplog.text


@pytest.mark.slow
@pytest.mark.skipif(not GLYPHS.is_dir(), reason="no glyph set at $CLCE_GLYPHS_DIR")
def test_glyph_classes_with_the_packaged_encoder(tmp_path: Path, capsys) -> None:
    """Six novel glyph classes, frozen ImageNet EfficientNet-Lite0 at 64 px: well above chance (20%)."""
    for folder in sorted(GLYPHS.iterdir())[::24][:6]:
        shutil.copytree(folder, tmp_path / "glyphs" / folder.name)
    args = ["--model", "tf_efficientnet_lite0", "--pretrained", "packaged", "--img-size", "64"]
    args += [
        "--data-dir",
        str(tmp_path / "glyphs"),
        "--shots",
        "1",
        "5",
        "--episodes",
        "200",
        "--workers",
        "0",
    ]
    assert evaluate.main(args) == 0
    lines = re.findall(r"^5-way (\d)-shot: (\d+\.\d{2}) ± \d+\.\d{2} \(200 episodes, 15 queries\)$", capsys.readouterr().out, re.M)  # fmt: skip
    assert [k for k, _ in lines] == ["1", "5"]
    assert all(float(acc) > 30 for _, acc in lines)
