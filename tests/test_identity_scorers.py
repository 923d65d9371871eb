"""Identity scorers (#36): CCIP read with onnxruntime (tested on tiny graphs built here with CCIP's
input/output names and shapes and its metrics.json), CLIP-I moved from sheets/similarity.py, and
`get_scorer`'s choice by what is available locally."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from charstudio.errors import ConfigError, ModelLoadError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CCIP_MODEL = "ccip-caformer-24-randaug-pruned"
# CCIP's preprocessing, written out here independently of charstudio: CLIP's mean and std
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


# --- tiny CCIP-shaped graphs -------------------------------------------------------------------

def _save(graph, path: Path) -> None:
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def feature_graph(path: Path, input_name: str = "input", size: int = 384) -> None:
    """'input' (N, 3, size, size) -> 'output' (N, 3): each channel's mean, so a test can read back
    what the scorer fed in. The fixed size makes onnxruntime refuse a picture of any other size."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 3, size, size])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])
    node = helper.make_node("ReduceMean", [input_name], ["output"], axes=[2, 3], keepdims=0)
    _save(helper.make_graph([node], "feat", [x], [y]), path)


def metrics_graph(path: Path) -> None:
    """'input' (N, D) features -> 'output' (N, N): the L1 distance of every pair (not a cosine),
    so a test can tell that the difference matrix comes from this graph."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", "N"])
    consts = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("ax1", 1), ("ax0", 0), ("ax2", 2))]
    nodes = [helper.make_node("Unsqueeze", ["input", "ax1"], ["a"]), helper.make_node("Unsqueeze", ["input", "ax0"], ["b"]),
             helper.make_node("Sub", ["a", "b"], ["d"]), helper.make_node("Abs", ["d"], ["ad"]),
             helper.make_node("ReduceSum", ["ad", "ax2"], ["output"], keepdims=0)]
    _save(helper.make_graph(nodes, "metrics", [x], [y], initializer=consts), path)


def ccip_folder(folder: Path, threshold: float = 0.1784, input_name: str = "input") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    feature_graph(folder / "model_feat.onnx", input_name)
    metrics_graph(folder / "model_metrics.onnx")
    (folder / "metrics.json").write_text(json.dumps({"threshold": threshold, "f1": 0.9}))
    return folder


def expected_feature(image: Image.Image, resample=Image.BILINEAR) -> np.ndarray:
    rgb = image.convert("RGB").resize((384, 384), resample=resample)
    data = np.asarray(rgb, np.float64) / 255.0
    return ((data - CLIP_MEAN) / CLIP_STD).mean(axis=(0, 1))


def pattern(w: int = 37, h: int = 23) -> Image.Image:
    """Stripes in three different colours: each channel has its own mean, and a nearest-neighbour
    resize keeps other shares of the stripes than a bilinear one."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, ::3] = (250, 20, 90)
    a[:, 1::3] = (10, 200, 40)
    a[:, 2::3] = (60, 30, 240)
    a[::4] //= 2
    return Image.fromarray(a)


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty local hub cache (the real layout is created in it by `cache_files`)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def cache_files(cache: Path, repo: str, files: dict[str, Path | str]) -> None:
    """Put files in the hub cache's layout: models--org--name/snapshots/<rev>/..., refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / ("0" * 40)
    for name, source in files.items():
        dest = snapshot / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(Path(source).read_bytes() if isinstance(source, Path) else source.encode())
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text("0" * 40)


# --- CCIP --------------------------------------------------------------------------------------

def test_ccip_preprocessing_is_rgb_bilinear_384_with_clip_normalisation(tmp_path):
    from charstudio.identity.ccip import CcipScorer

    scorer = CcipScorer(ccip_folder(tmp_path / "ccip"))
    image = pattern()
    feature = scorer.embed([image, image.resize((64, 64))])
    assert feature.shape == (2, 3) and feature.dtype == np.float32
    np.testing.assert_allclose(feature[0], expected_feature(image), atol=2e-4)
    np.testing.assert_allclose(feature[1], expected_feature(image.resize((64, 64))), atol=2e-4)
    # The check can fail: a nearest-neighbour resize, or BGR order, would give other means.
    assert np.abs(expected_feature(image, Image.NEAREST) - expected_feature(image)).max() > 5e-3  # >> atol
    assert np.abs(feature[0][::-1] - expected_feature(image)).max() > 1e-2


def test_ccip_lays_transparency_over_white(tmp_path):
    from charstudio.identity.ccip import CcipScorer

    scorer = CcipScorer(ccip_folder(tmp_path / "ccip"))
    rgba = pattern().convert("RGBA")
    alpha = np.zeros(rgba.size[::-1], np.uint8)
    alpha[:, : rgba.size[0] // 2] = 255
    rgba.putalpha(Image.fromarray(alpha))
    on_white = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    np.testing.assert_allclose(scorer.embed([rgba])[0], expected_feature(on_white), atol=2e-4)


def test_ccip_threshold_comes_from_metrics_json(tmp_path):
    from charstudio.identity.ccip import CcipScorer

    assert CcipScorer(ccip_folder(tmp_path / "a", threshold=0.1784)).threshold == pytest.approx(0.1784)
    scorer = CcipScorer(ccip_folder(tmp_path / "b", threshold=0.25))
    assert scorer.threshold == pytest.approx(0.25) and scorer.min_score == pytest.approx(0.75)
    assert CcipScorer(tmp_path / "b", threshold=0.3).threshold == 0.3  # an explicit one wins


def test_ccip_difference_matrix_comes_from_model_metrics(tmp_path):
    from charstudio.identity.ccip import CcipScorer

    scorer = CcipScorer(ccip_folder(tmp_path / "ccip", threshold=0.5))
    a = np.array([[0.1, 0.2, 0.3], [1.0, 0.0, -1.0]], np.float32)
    b = np.array([[0.1, 0.2, 0.4], [0.0, 0.0, 0.0], [2.0, 2.0, 2.0]], np.float32)
    diff = scorer.difference(a, b)
    assert diff.shape == (2, 3)
    np.testing.assert_allclose(diff, np.abs(a[:, None] - b[None]).sum(-1), atol=1e-6)  # L1, the graph's
    # The report shows it on the identity scale, with the threshold from metrics.json.
    images = [Image.new("RGB", (40, 40), c) for c in ((200, 30, 30), (190, 40, 30), (20, 20, 220))]
    report = scorer.report(images)
    feats = np.stack([expected_feature(im) for im in images])
    l1 = np.abs(feats[:, None] - feats[None]).sum(-1)
    np.testing.assert_allclose(report.matrix, 1.0 - l1, atol=1e-3)
    assert report.scorer == "ccip" and report.threshold == pytest.approx(0.5)
    assert report.below == [i for i in (1, 2) if 1.0 - l1[i, 0] < 0.5]


def test_ccip_finds_its_files_in_a_repo_download_or_the_hub_cache(tmp_path, empty_hub_cache):
    from charstudio.identity.ccip import CcipScorer, cached_folder

    ccip_folder(tmp_path / "repo" / CCIP_MODEL, threshold=0.2)
    assert CcipScorer(tmp_path / "repo").folder == tmp_path / "repo" / CCIP_MODEL
    assert cached_folder() is None
    with pytest.raises(ModelLoadError, match="not in the local hub cache.*huggingface-cli download deepghs/ccip_onnx"):
        CcipScorer()
    source = tmp_path / "repo" / CCIP_MODEL
    cache_files(empty_hub_cache, "deepghs/ccip_onnx",
                {f"{CCIP_MODEL}/{n}": source / n for n in ("model_feat.onnx", "model_metrics.onnx", "metrics.json")})
    scorer = CcipScorer()
    assert scorer.threshold == pytest.approx(0.2) and Path(scorer.folder).name == CCIP_MODEL
    assert scorer.embed([pattern()]).shape == (1, 3)


def test_ccip_errors_name_the_field_the_value_and_what_is_missing(tmp_path):
    from charstudio.identity.ccip import CcipScorer

    folder = ccip_folder(tmp_path / "ccip")
    (folder / "model_metrics.onnx").unlink()
    with pytest.raises(ModelLoadError, match=r"folder='.*ccip': the folder has no model_metrics.onnx"):
        CcipScorer(folder)
    with pytest.raises(ModelLoadError, match=r"scorer='.*nowhere': no such folder"):
        CcipScorer(tmp_path / "nowhere", field="scorer")
    bad = ccip_folder(tmp_path / "renamed", input_name="pixels")
    scorer = CcipScorer(bad)  # the graphs load when first used
    with pytest.raises(ModelLoadError, match=r"model_feat.onnx': the graph takes 'pixels'.*CCIP's takes one 'input'"):
        scorer.embed([pattern()])
    (bad / "metrics.json").write_text(json.dumps({"f1": 0.9}))
    with pytest.raises(ModelLoadError, match=r"metrics.json': its 'threshold' is None"):
        CcipScorer(bad)


# --- CLIP-I ------------------------------------------------------------------------------------

def test_clip_i_is_one_minus_cosine_with_its_documented_threshold():
    from charstudio.identity import clip
    from charstudio.sheets import similarity

    vectors = {(255, 0, 0): [1.0, 0.0], (250, 0, 0): [0.9, 0.1], (0, 0, 255): [0.0, 1.0]}
    scorer = clip.ClipScorer(lambda images: np.array([vectors[im.getpixel((0, 0))] for im in images]))
    images = [Image.new("RGB", (8, 8), c) for c in vectors]
    report = scorer.report(images)
    cos = 0.9 / np.hypot(0.9, 0.1)
    np.testing.assert_allclose(report.scores, [1.0, cos, 0.0], atol=1e-6)
    assert scorer.threshold == clip.CLIP_THRESHOLD == 0.20 and report.below == [2]
    # sheets/similarity.py re-exports the moved code: the same objects
    assert similarity.score is clip.score and similarity.load_embedder is clip.load_embedder
    assert similarity.check_embedder_folder is clip.check_embedder_folder


# --- get_scorer --------------------------------------------------------------------------------

def test_get_scorer_takes_a_ccip_folder(tmp_path, caplog):
    from charstudio.identity import get_scorer
    from charstudio.identity.ccip import CcipScorer

    folder = ccip_folder(tmp_path / "ccip", threshold=0.19)
    with caplog.at_level(logging.INFO, logger="charstudio.identity.select"):
        scorer = get_scorer(str(folder))
    assert isinstance(scorer, CcipScorer) and scorer.threshold == pytest.approx(0.19)
    assert "identity scorer: ccip" in caplog.text and str(folder) in caplog.text
    assert isinstance(get_scorer(folder), CcipScorer)  # a Path too
    with pytest.raises(ModelLoadError, match=r"scorer='.*missing': no such folder"):
        get_scorer(str(tmp_path / "missing"))


def test_get_scorer_auto_prefers_ccip_then_clip_then_mini(tmp_path, empty_hub_cache, caplog):
    from charstudio.identity import get_scorer
    from charstudio.identity.ccip import CcipScorer
    from charstudio.identity.clip import ClipScorer
    from charstudio.identity.mini_scorer import MiniScorer

    # 1. nothing cached: mini's scorer, with a warning when the pictures come from another model
    with caplog.at_level(logging.INFO, logger="charstudio.identity.select"):
        assert isinstance(get_scorer(), MiniScorer)
        assert isinstance(get_scorer("auto", model="mini"), MiniScorer)
    assert "neither CCIP's nor CLIP-L's files" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="charstudio.identity.select"):
        get_scorer(None, model="sd15")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'sd15'" in warnings[0] and "only mean something on mini-world" in warnings[0]
    # 2. CLIP-L cached: CLIP-I
    cache_files(empty_hub_cache, "openai/clip-vit-large-patch14", {"config.json": "{}"})
    assert isinstance(get_scorer(), ClipScorer) and isinstance(get_scorer("clip"), ClipScorer)
    # 3. CCIP cached too: CCIP
    source = ccip_folder(tmp_path / "src")
    cache_files(empty_hub_cache, "deepghs/ccip_onnx",
                {f"{CCIP_MODEL}/{n}": source / n for n in ("model_feat.onnx", "model_metrics.onnx", "metrics.json")})
    assert isinstance(get_scorer(), CcipScorer) and isinstance(get_scorer("CCIP"), CcipScorer)
    assert isinstance(get_scorer("mini"), MiniScorer)


def test_get_scorer_refuses_what_it_cannot_use(empty_hub_cache):
    from charstudio.identity import Scorer, get_scorer

    for bad in ("ccipp", "", 3, ["mini"]):
        with pytest.raises(ConfigError, match=r"^scorer=.*'auto' \(or None\), 'ccip', 'clip', 'mini'") as info:
            get_scorer(bad)
        assert info.value.field == "scorer"
    with pytest.raises(ModelLoadError, match=r"scorer='clip': openai/clip-vit-large-patch14 is not in the local"):
        get_scorer("clip")
    with pytest.raises(ModelLoadError, match=r"scorer='ccip': CCIP's .* not in the local hub cache"):
        get_scorer("ccip")
    mine = Scorer()
    assert get_scorer(mine) is mine


def test_roc_auc_agrees_with_counting_pairs():
    from charstudio.identity.train import roc_auc

    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, 40).round(1), rng.normal(0, 1, 50).round(1)  # rounded: ties happen
    counted = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (40 * 50)
    assert roc_auc(pos, neg) == pytest.approx(counted)
    assert roc_auc([2, 3], [0, 1]) == 1.0 and roc_auc([0, 1], [2, 3]) == 0.0
