"""The learned bin-state estimator on the edge: parity with training, loading errors, the bin rule."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from curbwatch.edge.bin_classifier import (
    DEFAULT_BIN_ARTEFACT,
    BinClassifierConfig,
    BinClassifierError,
    BinClassifierEstimator,
    BinFeatureExtractor,
    FeatureSpec,
    load_bin_classifier,
    pool_feature_map,
)
from curbwatch.edge.bins import UNKNOWN, BinEstimatorError, BinStateEstimator, make_estimator
from curbwatch.edge.config import load_edge_config
from curbwatch.edge.detect.card import file_sha256
from curbwatch.edge.rules.bins import BinRule, BinRuleConfig
from curbwatch.edge.rules.config import RulesConfig
from curbwatch.schema.events import EventType
from curbwatch.schema.yamlio import ConfigError
from tests.conftest import REPO_ROOT
from tests.edge.rules.test_bins_rule import UPDATE_S, Script, counter_ids, make_zone, play
from tests.edge.test_bins import SITE_POLYGON, BinScene, drift, pile

OVERFLOW_PHOTO = "amsterdam-bins/overflow/mdc_photo_mdc_4ef180_cdv_photo_001_1474566130639.jpg"


@pytest.fixture(scope="module")
def photo(data_dir: Path) -> np.ndarray:
    image = cv2.imread(str(data_dir / OVERFLOW_PHOTO))
    assert image is not None
    return image


def raw_config(detector: Path, **overrides: object) -> BinClassifierConfig:
    """Every judgement counts at once: no interval, calibration or smoothing."""
    fields = {"detector": detector, "interval_s": 0, "calibrate_s": 0, "smooth_s": 0} | overrides
    return BinClassifierConfig.model_validate(fields)


def test_estimator_matches_the_training_pipeline(
    tmp_path: Path, data_dir: Path, yolox_nano_path: Path, photo: np.ndarray
) -> None:
    """A head fitted by the training code, saved and loaded by the edge, scores a photo identically."""
    pytest.importorskip("sklearn")
    from curbwatch.training import bin_classifier as training

    photos = training.load_photos(data_dir / "amsterdam-bins")
    chosen = [p for p in photos if p.label == 0][:3] + [p for p in photos if p.label == 1][:3]
    spec = FeatureSpec(layers=training.YOLOX_NANO_LAYERS)
    extractor = BinFeatureExtractor(yolox_nano_path, spec, file_sha256(yolox_nano_path))
    values = training.extract_features(chosen, extractor)
    features = training.feature_set(values, np.array([p.label for p in chosen]), spec)
    choice = {"deep": training.C_GRID["deep"], "colour": (1.0,)}
    blocks = {
        b: training.fit_averaged_block(features.block(b), features.labels, cs) for b, cs in choice.items()
    }
    committed = json.loads(DEFAULT_BIN_ARTEFACT.read_text())
    artefact = committed | {"head": training.fit_head(features, choice).model_dump(mode="json")}
    path = tmp_path / "bins.json"
    path.write_text(json.dumps(artefact))

    observed = BinClassifierEstimator(raw_config(yolox_nano_path, artefact=path)).observe(
        photo, np.ones(photo.shape[:2], bool), ts=0.0
    )
    row = extractor.features(photo, np.ones(photo.shape[:2], bool))[None]
    logit = sum(float(fit.logits(row[:, :, features.slices[b]])[0]) for b, fit in blocks.items())
    assert observed.score == pytest.approx(1 / (1 + math.exp(-logit)), abs=1e-9)
    assert observed.overflowing is (logit >= 0)


def test_committed_classifier_scores_real_photos(data_dir: Path, yolox_nano_path: Path) -> None:
    """The shipped model on its own training photos (in-sample): most overflowing photos score high."""
    classifier = load_bin_classifier(DEFAULT_BIN_ARTEFACT, yolox_nano_path)
    scores = {}
    for folder in ("clean", "overflow"):
        for path in sorted((data_dir / "amsterdam-bins" / folder).glob("*.jpg"))[:4]:
            image = cv2.imread(str(path))
            scores[(folder, path.name)] = classifier.probability(image, np.ones(image.shape[:2], bool))
    clean = [s for (folder, _), s in scores.items() if folder == "clean"]
    overflow = [s for (folder, _), s in scores.items() if folder == "overflow"]
    assert np.mean(overflow) > np.mean(clean) + 0.3
    assert all(0.0 <= s <= 1.0 for s in scores.values())


def test_loaded_once_per_file_pair(yolox_nano_path: Path) -> None:
    first = load_bin_classifier(DEFAULT_BIN_ARTEFACT, yolox_nano_path)
    assert load_bin_classifier(DEFAULT_BIN_ARTEFACT, yolox_nano_path) is first


def test_masked_out_pixels_do_not_count(yolox_nano_path: Path, photo: np.ndarray) -> None:
    """Painting over the masked-out part changes the network input but not the colour statistics."""
    classifier = load_bin_classifier(DEFAULT_BIN_ARTEFACT, yolox_nano_path)
    mask = np.zeros(photo.shape[:2], bool)
    mask[:, : photo.shape[1] // 2] = True
    painted = photo.copy()
    painted[:, 2 * photo.shape[1] // 3 :] = (0, 0, 255)  # clear of the mask edge: resizing blends pixels
    before, after = (classifier.extractor.features(image, mask) for image in (photo, painted))
    assert np.allclose(before[0, -33:], after[0, -33:])
    assert not np.allclose(before, after)  # the network sees context beyond the site


def test_pooling_weights_cells_by_their_visible_share() -> None:
    feature_map = np.zeros((2, 4, 4), np.float32)
    feature_map[:, :, 2:] = 100.0  # right half: what a person standing there would look like
    weights = np.zeros((16, 16), np.float32)
    weights[:, :8] = 1.0  # canvas-sized: only the left half is visible site
    pooled = pool_feature_map(feature_map, weights)
    assert np.allclose(pooled, 0.0)
    with pytest.raises(BinEstimatorError, match="no visible site pixel"):
        pool_feature_map(feature_map, np.zeros((16, 16), np.float32))


@dataclass
class FakeClassifier:
    """Logits scripted by call; stands in for a loaded classifier."""

    logits: list[float]

    @dataclass
    class _Head:
        threshold: float = 0.5

    @dataclass
    class _Artefact:
        head: FakeClassifier._Head

    def __post_init__(self) -> None:
        self.artefact = self._Artefact(self._Head())
        self.calls = 0

    def logit(self, crop: np.ndarray, mask: np.ndarray) -> float:
        self.calls += 1
        return self.logits.pop(0)


def fake_estimator(logits: list[float], **overrides: object) -> tuple[BinClassifierEstimator, FakeClassifier]:
    fake = FakeClassifier(list(logits))
    fields = {"detector": "unused.onnx", "interval_s": 0, "calibrate_s": 0, "smooth_s": 0} | overrides
    config = BinClassifierConfig.model_validate(fields)
    return BinClassifierEstimator(config, classifier=fake), fake  # type: ignore[arg-type]


CROP, MASK = np.zeros((20, 30, 3), np.uint8), np.ones((20, 30), bool)


def test_judges_at_most_every_interval() -> None:
    estimator, fake = fake_estimator([3.0, 3.0, 3.0], interval_s=10.0)
    results = [estimator.observe(CROP, MASK, ts) for ts in (0.0, 4.0, 9.9, 10.0, 25.0)]
    assert [r.score is not None for r in results] == [True, False, False, True, True]
    assert fake.calls == 3


def test_hysteresis_and_smoothing() -> None:
    logit = {p: math.log(p / (1 - p)) for p in (0.45, 0.55, 0.35)}
    estimator, _ = fake_estimator([logit[0.55], logit[0.45], logit[0.35]])
    assert [estimator.observe(CROP, MASK, ts).overflowing for ts in (0.0, 1.0, 2.0)] == [True, True, False]
    smooth, _ = fake_estimator([10.0, -10.0], smooth_s=60.0)
    smooth.observe(CROP, MASK, 0.0)
    half_life = smooth.observe(CROP, MASK, 60.0 * math.log(2))
    assert half_life.score == pytest.approx(0.5, abs=1e-3)


def test_calibration_measures_the_site_from_its_clean_level() -> None:
    """The first calibrate_s of judgements set the clean level; no verdict meanwhile."""
    estimator, _ = fake_estimator([5.0, 5.2, 4.8, 5.0, 8.5], calibrate_s=30.0, interval_s=10.0)
    assert [estimator.observe(CROP, MASK, ts) for ts in (0.0, 10.0, 20.0)] == [UNKNOWN] * 3
    assert estimator.calibrating
    clean = estimator.observe(CROP, MASK, 30.0)  # the calibration's last judgement
    assert clean == UNKNOWN and not estimator.calibrating
    assert estimator.observe(CROP, MASK, 40.0).score == pytest.approx(
        1 / (1 + math.exp(-(math.log(0.1 / 0.9) + 3.5))), abs=1e-9
    )


def test_bad_inputs_and_empty_masks() -> None:
    estimator, fake = fake_estimator([1.0])
    with pytest.raises(BinEstimatorError, match="crop must be uint8"):
        estimator.observe(np.zeros((4, 4, 3), np.float32), np.ones((4, 4), bool), 0.0)
    with pytest.raises(BinEstimatorError, match="mask must be bool"):
        estimator.observe(CROP, np.ones((4, 4), bool), 0.0)
    assert estimator.observe(CROP, np.zeros_like(MASK), 0.0) == UNKNOWN
    assert fake.calls == 0


def test_missing_artefact(tmp_path: Path, yolox_nano_path: Path) -> None:
    with pytest.raises(BinClassifierError, match=r"no such file; train one with `curbwatch train bins"):
        load_bin_classifier(tmp_path / "none.json", yolox_nano_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(format="other"), "format"),
        (
            lambda a: a["head"].update(weights=a["head"]["weights"][:-1]),
            "mean, std and weights must have one",
        ),
        (lambda a: a["head"].update(std=[0.0] * len(a["head"]["std"])), "std must be positive"),
        (lambda a: a["detector"].update(sha256="abc"), "detector.sha256"),
        (lambda a: a["features"].update(colour=False), "head has 801 weights but the features give 768"),
    ],
)
def test_bad_artefact_is_refused_with_the_field(
    tmp_path: Path, yolox_nano_path: Path, change: Callable[[dict], object], message: str
) -> None:
    artefact = json.loads(DEFAULT_BIN_ARTEFACT.read_text())
    change(artefact)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(artefact))
    with pytest.raises(BinClassifierError, match=f"bad.json is invalid: .*{message}"):
        load_bin_classifier(path, yolox_nano_path)


def test_not_json_is_refused(tmp_path: Path, yolox_nano_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(BinClassifierError, match=r"bad\.json is invalid"):
        load_bin_classifier(path, yolox_nano_path)


def test_missing_detector(tmp_path: Path) -> None:
    with pytest.raises(BinClassifierError, match=r"detector .*gone.onnx: no such file.*sha256 [0-9a-f]{64}"):
        load_bin_classifier(DEFAULT_BIN_ARTEFACT, tmp_path / "gone.onnx")


def test_other_detector_is_refused_by_sha256(tmp_path: Path, yolox_nano_path: Path) -> None:
    other = tmp_path / "yolox_nano.onnx"
    other.write_bytes(yolox_nano_path.read_bytes() + b"\x00")
    with pytest.raises(
        BinClassifierError, match=r"has sha256 [0-9a-f]{64}, but the bin classifier was trained"
    ):
        load_bin_classifier(DEFAULT_BIN_ARTEFACT, other)


def test_layer_missing_from_the_detector(tmp_path: Path, yolox_nano_path: Path) -> None:
    artefact = json.loads(DEFAULT_BIN_ARTEFACT.read_text())
    artefact["features"]["layers"][0]["tensor"] = "no-such-tensor"
    path = tmp_path / "bins.json"
    path.write_text(json.dumps(artefact))
    with pytest.raises(BinClassifierError, match=r"cannot expose feature tensors.*no-such-tensor"):
        load_bin_classifier(path, yolox_nano_path)
    artefact["features"]["layers"][0]["tensor"] = "1024"  # exists, but has 256 channels, not 128
    path.write_text(json.dumps(artefact))
    with pytest.raises(BinClassifierError, match=r"tensor '1024'.*has shape"):
        load_bin_classifier(path, yolox_nano_path)


EDGE_YAML = """\
version: 1
device_id: box-1
detector: {{model_path: {detector}}}
evidence: {{root: evidence}}
bins:
  estimator: bin_classifier
  estimator_options: {{artefact: {artefact}, detector: {detector}, interval_s: 5}}
cameras:
  - id: cam-1
    source: {{url: videos/a.mp4}}
    zones: zones/cam-1.yaml
"""


def test_edge_config_selects_it_with_paths_relative_to_the_file(
    tmp_path: Path, yolox_nano_path: Path
) -> None:
    shutil.copy(DEFAULT_BIN_ARTEFACT, tmp_path / "bins.json")
    (tmp_path / "models").mkdir()
    shutil.copy(yolox_nano_path, tmp_path / "models" / "yolox_nano.onnx")
    path = tmp_path / "edge.yaml"
    path.write_text(EDGE_YAML.format(artefact="bins.json", detector="models/yolox_nano.onnx"))
    config = load_edge_config(path)
    options = config.bins.estimator_options
    assert options["artefact"] == tmp_path.resolve() / "bins.json"
    assert options["detector"] == tmp_path.resolve() / "models" / "yolox_nano.onnx"
    assert isinstance(make_estimator(config.bins.estimator, **options), BinClassifierEstimator)


def test_edge_config_with_the_wrong_detector_fails_at_load(tmp_path: Path, yolox_nano_path: Path) -> None:
    shutil.copy(DEFAULT_BIN_ARTEFACT, tmp_path / "bins.json")
    (tmp_path / "other.onnx").write_bytes(yolox_nano_path.read_bytes()[:-1])
    path = tmp_path / "edge.yaml"
    path.write_text(EDGE_YAML.format(artefact="bins.json", detector="other.onnx"))
    with pytest.raises(ConfigError, match=r"other\.onnx has sha256 .* but the bin classifier was trained"):
        load_edge_config(path)
    path.write_text(EDGE_YAML.format(artefact="none.json", detector="other.onnx"))
    with pytest.raises(ConfigError, match=r"none\.json: no such file"):
        load_edge_config(path)


def test_options_are_validated(yolox_nano_path: Path) -> None:
    with pytest.raises(BinClassifierError, match="detector"):
        make_estimator("bin_classifier")
    with pytest.raises(BinClassifierError, match="hysteresis"):
        make_estimator("bin_classifier", detector=yolox_nano_path, hysteresis=0.7)
    assert isinstance(make_estimator("bin_classifier", detector=yolox_nano_path), BinStateEstimator)


def test_rule_flags_a_pile_at_a_real_cctv_bin_site(data_dir: Path, yolox_nano_path: Path) -> None:
    """The Frigate kerbside site: clean for 400 s, then rubbish piles up, is taken away at 900 s.

    The default settings calibrate on the first 300 s; the raw phone-photo scores would call this
    clean site overflowing (~0.98).
    """
    scene = BinScene.load(data_dir, seed=11)
    items = pile(np.random.default_rng(7), data_dir)
    dumped = lambda ts: items[: int((ts - 400.0) // 10) + 1] if 400.0 <= ts < 900.0 else []  # noqa: E731
    runs = {}
    for name, items_at in (("clean", lambda ts: []), ("pile", dumped)):
        estimator = make_estimator("bin_classifier", detector=yolox_nano_path)
        rule = BinRule(
            make_zone(), SITE_POLYGON, estimator, RulesConfig(update_interval_s=UPDATE_S), BinRuleConfig(),
            id_factory=counter_ids(),
        )  # fmt: skip
        script = Script(items_at=items_at, lighting_at=lambda ts: drift(ts))
        runs[name] = play(rule, scene, script, np.arange(0.0, 1200.0, 5.0))
    assert runs["clean"].emitted == []
    [(start_at, start)] = runs["pile"].of(EventType.START)
    [(end_at, _)] = runs["pile"].of(EventType.END)
    assert 400.0 < start.episode_start_ts < 600.0 and start_at == pytest.approx(
        start.episode_start_ts + 120.0
    )
    assert 900.0 < end_at < 1100.0


def test_edge_estimator_imports_neither_torch_nor_sklearn(yolox_nano_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from pathlib import Path
        from curbwatch.edge.config import EdgeConfig
        from curbwatch.edge.rules.bins import make_bin_rule
        from curbwatch.edge.bins import make_estimator
        estimator = make_estimator("bin_classifier", detector=Path({str(yolox_nano_path)!r}), calibrate_s=0)
        print(estimator.observe(np.zeros((60, 80, 3), np.uint8), np.ones((60, 80), bool), 0.0))
        heavy = sorted(name for name in ("torch", "sklearn", "ultralytics", "onnx") if name in sys.modules)
        print("heavy:", heavy)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    assert "BinObservation(score=" in result.stdout
    assert result.stdout.strip().endswith("heavy: []")
