"""Is a new detector better? mAP per class on a fixed split, violation-level replay, a promotion gate.

Two measuring methods, never mixed in one comparison:

- ``ultralytics-val`` for PyTorch weights (``.pt``): Ultralytics' own ``val`` on the dataset split.
- ``edge-onnx`` for ONNX files: the edge's own detector (``OnnxDetector``: its letterbox, decoding and
  NMS, at Ultralytics' validation settings: score ≥ 0.001, NMS IoU 0.7, 300 boxes) and the small
  COCO-style mAP below (greedy matching in score order at IoU 0.50:0.95, 101-point interpolated AP,
  as Ultralytics computes it). This is what the edge will actually see.

Violation-level precision and recall come from replaying recorded detection logs through the edge's
tracker, zones and rules (``edge/replay.py``) and matching the episodes with ground-truth episodes.
The logs hold the detections of whichever model recorded them, so that part measures the rules on
those detections; it changes with the candidate only when the logs were recorded with it.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from curbwatch.schema.yamlio import ConfigError
from curbwatch.training.metrics import (
    Boxes,
    ClassMetrics,
    EvaluationError,
    MapResult,
    dataset_names,
    detection_map,
    load_split,
)

logger = logging.getLogger(__name__)

# Ultralytics' validation settings, so edge-onnx numbers line up with ultralytics-val ones.
VAL_SCORE, VAL_NMS_IOU, VAL_MAX_DET = 0.001, 0.7, 300


# ---- measuring a model ------------------------------------------------------------------------------


Method = Literal["ultralytics-val", "edge-onnx"]


class DetectionMetrics(BaseModel):
    """Box accuracy of one model on one dataset split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method
    model: str
    model_sha256: str
    data: str
    split: str
    images: int
    map50: float
    map50_95: float
    per_class: list[ClassMetrics]


def method_of(model: Path) -> Method:
    if model.suffix == ".pt":
        return "ultralytics-val"
    if model.suffix == ".onnx":
        return "edge-onnx"
    raise EvaluationError(f"{model}: expected PyTorch weights (.pt) or an ONNX model (.onnx)")


def edge_predictions(model: Path, images: Sequence[Path]) -> tuple[tuple[str, ...], list[Boxes]]:
    """The edge detector's boxes on each image, at Ultralytics' validation thresholds."""
    import cv2

    from curbwatch.edge.detect.onnx import DetectorConfig, DetectorError, OnnxDetector

    try:
        detector = OnnxDetector(
            DetectorConfig(
                model_path=model,
                score_threshold=VAL_SCORE,
                nms_iou=VAL_NMS_IOU,
                max_detections=VAL_MAX_DET,
            )
        )
    except DetectorError as exc:
        raise EvaluationError(f"the edge detector cannot load {model}: {exc}") from exc
    found = []
    for path in images:
        image = cv2.imread(str(path))
        if image is None:
            raise EvaluationError(f"{path}: not a readable image")
        detections = detector.detect(image)
        found.append(
            Boxes(
                detections.xyxy.astype(np.float64),
                detections.class_ids.astype(np.int64),
                detections.scores.astype(np.float64),
            )
        )
    return detector.class_names, found


def _check_names(model: Path, model_names: Sequence[str], data_names: Sequence[str]) -> None:
    if tuple(model_names) != tuple(data_names):
        raise EvaluationError(
            f"{model} has classes {list(model_names)} but the dataset has {list(data_names)}: "
            "the class ids would not mean the same things"
        )


def evaluate_onnx(model: Path, data_yaml: Path, split: str = "val") -> tuple[DetectionMetrics, MapResult]:
    """mAP of an ONNX model as the edge runs it."""
    from curbwatch.edge.detect.card import file_sha256

    labelled = load_split(data_yaml, split)
    names, predicted = edge_predictions(model, [item.path for item in labelled.images])
    _check_names(model, names, labelled.class_names)
    result = detection_map(predicted, [item.truth for item in labelled.images], names)
    metrics = DetectionMetrics(
        method="edge-onnx",
        model=str(model),
        model_sha256=file_sha256(model),
        data=str(data_yaml),
        split=split,
        images=len(labelled.images),
        map50=result.map50,
        map50_95=result.map50_95,
        per_class=result.per_class,
    )
    return metrics, result


def evaluate_weights(
    model: Path,
    data_yaml: Path,
    out_dir: Path,
    split: str = "val",
    imgsz: int | None = None,
    name: str = "val",
) -> DetectionMetrics:
    """mAP of PyTorch weights by Ultralytics' own ``val``; its plots go to ``out_dir/name``."""
    from curbwatch.edge.detect.card import file_sha256
    from curbwatch.training.train import import_ultralytics, pick_device

    names, _ = dataset_names(data_yaml)
    yolo = import_ultralytics().YOLO(str(model))
    _check_names(model, [yolo.names[i] for i in range(len(yolo.names))], names)
    size = imgsz or int((yolo.ckpt or {}).get("train_args", {}).get("imgsz", 640))
    out_dir.mkdir(parents=True, exist_ok=True)
    results = yolo.val(
        data=str(data_yaml),
        split=split,
        imgsz=size,
        batch=8,
        workers=0,
        device=pick_device(None),
        plots=True,
        project=str(out_dir.resolve()),
        name=name,
        exist_ok=True,
        verbose=False,
    )
    per_class = []
    counts = results.nt_per_class
    image_counts = results.nt_per_image
    for position, class_id in enumerate(results.ap_class_index):
        per_class.append(
            ClassMetrics(
                name=names[int(class_id)],
                images=int(image_counts[int(class_id)]),
                instances=int(counts[int(class_id)]),
                ap50=float(results.box.ap50[position]),
                ap50_95=float(results.box.ap[position]),
            )
        )
    return DetectionMetrics(
        method="ultralytics-val",
        model=str(model),
        model_sha256=file_sha256(model),
        data=str(data_yaml),
        split=split,
        images=len(load_split(data_yaml, split).images),
        map50=float(results.box.map50),
        map50_95=float(results.box.map),
        per_class=per_class,
    )


# ---- zones and violations ---------------------------------------------------------------------------


def check_zone_classes(zone_files: Sequence[Path], class_names: Sequence[str], model: str) -> list[str]:
    """Every class a zone file names must be one the model detects.

    The zone schema checks the classes a file lists; a class list left at its default (cars, trucks,
    buses ...) is not checked there, so a list of which the model knows no class at all is returned
    as a warning: that part of the rule can never fire with this model.

    Returns:
        The warnings, also logged.

    Raises:
        EvaluationError: Lists each zone file, line and the classes the model lacks.
    """
    from curbwatch.schema.zones import load_zone_file

    problems, warnings = [], []
    known = set(class_names)
    for path in zone_files:
        try:
            zone_file = load_zone_file(path, class_names)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        for zone in zone_file.zones:
            for field_name, value in zone:
                if field_name.endswith("_classes") and value and not known.intersection(value):
                    warnings.append(
                        f"{path}: zone {zone.name}: {model} knows none of its {field_name} "
                        f"({', '.join(value)}); that part of the rule cannot fire"
                    )
    if problems:
        raise EvaluationError(
            f"zone files do not fit {model} (classes: {', '.join(class_names)}):\n" + "\n".join(problems)
        )
    for warning in warnings:
        logger.warning("%s", warning)
    return warnings


class TruthEpisode(BaseModel):
    """One true violation episode of a recorded log."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    zone: str
    violation: str
    begin_ts: float = Field(
        description="When the violation condition began (before the dwell), Unix seconds."
    )
    end_ts: float = Field(description="When it stopped, Unix seconds.")


class TruthFile(BaseModel):
    """``<log stem>.truth.json`` beside a detection log."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    episodes: list[TruthEpisode]


class LogResult(BaseModel):
    """Violation-level counts of one replayed log."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    log: str
    truth: int
    predicted: int
    matched: int


class ViolationMetrics(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    logs: list[LogResult]
    precision: float
    recall: float


def _episodes(events: Sequence) -> list[tuple[str, str, float, float]]:
    """(zone, violation, begin, end) of each episode in replayed events."""
    spans: dict[str, list] = {}
    for event in events:
        span = spans.setdefault(
            event.episode_id, [event.zone, event.violation.value, event.episode_start.timestamp(), 0.0]
        )
        span[3] = max(span[3], event.ts.timestamp())
    return [tuple(span) for span in spans.values()]  # type: ignore[misc]


def match_episodes(predicted: Sequence[tuple[str, str, float, float]], truth: Sequence[TruthEpisode]) -> int:
    """How many predicted episodes match a true one: same zone and violation, overlapping in time."""
    pairs = []
    for p, (zone, violation, begin, end) in enumerate(predicted):
        for t, true in enumerate(truth):
            overlap = min(end, true.end_ts) - max(begin, true.begin_ts)
            if zone == true.zone and violation == true.violation and overlap >= 0:
                pairs.append((overlap, p, t))
    used_p, used_t = set(), set()
    for _, p, t in sorted(pairs, reverse=True):
        if p not in used_p and t not in used_t:
            used_p.add(p)
            used_t.add(t)
    return len(used_p)


def violation_metrics(detlogs: Path, zones: Path) -> ViolationMetrics:
    """Replay each ``*.jsonl`` log with a ``<stem>.truth.json`` beside it against ``zones/<stem>.yaml``.

    Raises:
        EvaluationError: No log with ground truth, a missing or invalid zone or truth file, a bad log.
    """
    from curbwatch.edge.events import EventBuilder
    from curbwatch.edge.pipeline import PipelineParts
    from curbwatch.edge.replay import ReplayError, replay
    from curbwatch.schema.detlog import DetlogError, open_detlog
    from curbwatch.schema.zones import load_zone_file

    results = []
    for log in sorted(detlogs.glob("*.jsonl")):
        truth_path = log.with_name(log.stem + ".truth.json")
        if not truth_path.is_file():
            logger.info("%s: no ground truth (%s); not scored", log, truth_path.name)
            continue
        zone_path = zones / f"{log.stem}.yaml"
        try:
            truth = TruthFile.model_validate_json(truth_path.read_bytes())
            zone_file = load_zone_file(zone_path)
            builder = EventBuilder("replay", zone_file, model=None)
            events = list(replay(open_detlog(log), zone_file, PipelineParts(), builder))
        except (OSError, ValidationError, ConfigError, DetlogError, ReplayError) as exc:
            raise EvaluationError(f"cannot replay {log} against {zone_path}: {exc}") from exc
        predicted = _episodes(events)
        matched = match_episodes(predicted, truth.episodes)
        results.append(
            LogResult(log=log.name, truth=len(truth.episodes), predicted=len(predicted), matched=matched)
        )
    if not results:
        raise EvaluationError(f"{detlogs}: no detection log (*.jsonl) with a <stem>.truth.json beside it")
    predicted_total = sum(r.predicted for r in results)
    truth_total = sum(r.truth for r in results)
    matched_total = sum(r.matched for r in results)
    return ViolationMetrics(
        logs=results,
        precision=matched_total / predicted_total if predicted_total else 1.0,
        recall=matched_total / truth_total if truth_total else 1.0,
    )


# ---- promotion and the report ---------------------------------------------------------------------------


class Decision(BaseModel):
    """Whether the candidate replaces the baseline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    promoted: bool
    margin: float
    reasons: list[str]


def decide(candidate: DetectionMetrics, baseline: DetectionMetrics | None, margin: float) -> Decision:
    """Promote unless mAP50 or mAP50-95 is worse than the baseline's by more than ``margin``.

    Raises:
        EvaluationError: The two were measured differently or on different data.
    """
    if baseline is None:
        return Decision(promoted=True, margin=margin, reasons=["no baseline: nothing to be worse than"])
    if (candidate.method, candidate.data, candidate.split) != (
        baseline.method,
        baseline.data,
        baseline.split,
    ):
        raise EvaluationError(
            f"candidate ({candidate.method} on {candidate.data}:{candidate.split}) and baseline "
            f"({baseline.method} on {baseline.data}:{baseline.split}) were not measured the same way; "
            "compare .pt with .pt or .onnx with .onnx on the same data"
        )
    reasons, promoted = [], True
    for label, new, old in (
        ("mAP50", candidate.map50, baseline.map50),
        ("mAP50-95", candidate.map50_95, baseline.map50_95),
    ):
        worse = new < old - margin
        promoted &= not worse
        verdict = "worse than" if worse else "within the margin of or better than"
        reasons.append(f"{label} {new:.4f} vs baseline {old:.4f}: {verdict} the baseline (margin {margin})")
    return Decision(promoted=promoted, margin=margin, reasons=reasons)


class EvaluationReport(BaseModel):
    """``report.json``: both measurements, the decision, the replayed violations and the plots."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    candidate: DetectionMetrics
    baseline: DetectionMetrics | None
    decision: Decision
    violations: ViolationMetrics | None
    warnings: list[str] = Field(description="Zone class lists the model knows nothing of.")
    plots: list[str]


def _plot_ap(report: EvaluationReport, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c.name for c in report.candidate.per_class]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.38
    positions = np.arange(len(names))
    for axis, field_name, title in ((axes[0], "ap50", "AP50"), (axes[1], "ap50_95", "AP50-95")):
        axis.bar(
            positions - width / 2,
            [getattr(c, field_name) for c in report.candidate.per_class],
            width,
            label="candidate",
        )
        if report.baseline is not None:
            base = {c.name: getattr(c, field_name) for c in report.baseline.per_class}
            axis.bar(positions + width / 2, [base.get(n, 0.0) for n in names], width, label="baseline")
        axis.set_xticks(positions, names, rotation=30, ha="right")
        axis.set_ylim(0, 1)
        axis.set_title(f"{title} per class")
        axis.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_pr_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], out: Path, title: str) -> Path:
    """Precision-recall curves at IoU 0.5, one line per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(5, 4))
    for name, (recall, precision) in curves.items():
        axis.plot(np.concatenate(([0.0], recall)), np.concatenate(([1.0], precision)), label=name)
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.set_title(title)
    if curves:
        axis.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def render_report(report: EvaluationReport) -> str:
    """The evaluation as Markdown."""
    c, b = report.candidate, report.baseline
    lines = [
        "# Model evaluation",
        "",
        f"Candidate `{c.model}` (sha256 `{c.model_sha256[:16]}…`), measured with **{c.method}** on "
        f"`{c.data}` split `{c.split}` ({c.images} images).",
    ]
    if b is not None:
        lines.append(f"Baseline `{b.model}` (sha256 `{b.model_sha256[:16]}…`), measured the same way.")
    lines += [
        "",
        f"**Decision: {'promoted' if report.decision.promoted else 'not promoted'}** "
        f"(margin {report.decision.margin}).",
        "",
        *(f"- {reason}" for reason in report.decision.reasons),
        "",
        "## Boxes (mAP)",
        "",
        "| class | images | instances | AP50 | AP50-95 |"
        + (" baseline AP50 | baseline AP50-95 |" if b else ""),
        "|---|---|---|---|---|" + ("---|---|" if b else ""),
    ]
    base = {m.name: m for m in b.per_class} if b else {}
    for m in c.per_class:
        row = f"| {m.name} | {m.images} | {m.instances} | {m.ap50:.4f} | {m.ap50_95:.4f} |"
        if b:
            other = base.get(m.name)
            row += f" {other.ap50:.4f} | {other.ap50_95:.4f} |" if other else " – | – |"
        lines.append(row)
    instances = sum(m.instances for m in c.per_class)
    all_row = f"| **all** | {c.images} | {instances} | {c.map50:.4f} | {c.map50_95:.4f} |"
    lines.append(all_row + (f" {b.map50:.4f} | {b.map50_95:.4f} |" if b else ""))
    lines.append("")
    if c.method == "edge-onnx":
        lines.append(
            "Method edge-onnx: the edge's `OnnxDetector` (score ≥ 0.001, NMS IoU 0.7, ≤ 300 boxes) and "
            "curbwatch's own COCO-style mAP (greedy matching in score order, 101-point AP)."
        )
    else:
        lines.append("Method ultralytics-val: Ultralytics' `val` on the PyTorch weights.")
    lines += ["", "## Violations (replayed detection logs)", ""]
    if report.violations is None:
        lines.append("No detection logs given (`--detlogs` with `--zones`).")
    else:
        v = report.violations
        lines += [
            f"Precision **{v.precision:.3f}**, recall **{v.recall:.3f}** over {len(v.logs)} logs. The logs "
            "hold the detections of the model that recorded them: this measures tracker, zones and rules "
            "on them.",
            "",
            "| log | true episodes | reported episodes | matched |",
            "|---|---|---|---|",
            *(f"| {r.log} | {r.truth} | {r.predicted} | {r.matched} |" for r in v.logs),
        ]
    if report.warnings:
        lines += ["", "## Warnings", "", *(f"- {warning}" for warning in report.warnings)]
    lines += ["", "## Plots", "", *(f"![{Path(p).stem}]({Path(p).name})" for p in report.plots), ""]
    return "\n".join(lines)


def _measure(
    model: Path, data_yaml: Path, out_dir: Path, split: str, imgsz: int | None, label: str
) -> tuple[DetectionMetrics, list[Path]]:
    if method_of(model) == "edge-onnx":
        metrics, result = evaluate_onnx(model, data_yaml, split)
        plot = plot_pr_curves(
            result.pr_curves, out_dir / f"pr_{label}.png", f"{label}: precision-recall at IoU 0.5"
        )
        return metrics, [plot]
    metrics = evaluate_weights(model, data_yaml, out_dir, split, imgsz, name=f"val-{label}")
    plots = []
    ultralytics_pr = out_dir / f"val-{label}" / "BoxPR_curve.png"
    if ultralytics_pr.is_file():
        plots.append(Path(shutil.copy(ultralytics_pr, out_dir / f"pr_{label}.png")))
    return metrics, plots


def run_evaluation(
    model: Path,
    data_yaml: Path,
    out_dir: Path,
    *,
    baseline: Path | None = None,
    margin: float = 0.01,
    split: str = "val",
    imgsz: int | None = None,
    detlogs: Path | None = None,
    zones: Path | None = None,
) -> tuple[EvaluationReport, Path]:
    """Measure the candidate (and baseline), decide, replay logs; write report.md, report.json and plots.

    Raises:
        EvaluationError: Bad inputs (unknown model type, mismatched classes, zone classes the model
            lacks, unreadable logs), each with a message naming the file.
    """
    if baseline is not None and method_of(baseline) != method_of(model):
        raise EvaluationError(
            f"candidate {model} and baseline {baseline} are different kinds of file; "
            "compare .pt with .pt or .onnx with .onnx"
        )
    warnings: list[str] = []
    if zones is not None:
        # The model must have the dataset's classes (checked while measuring), so its zones are
        # checked against those, before any slow measuring.
        warnings = check_zone_classes(sorted(zones.glob("*.yaml")), dataset_names(data_yaml)[0], str(model))
    out_dir.mkdir(parents=True, exist_ok=True)
    candidate, plots = _measure(model, data_yaml, out_dir, split, imgsz, "candidate")
    base_metrics = None
    if baseline is not None:
        base_metrics, base_plots = _measure(baseline, data_yaml, out_dir, split, imgsz, "baseline")
        plots += base_plots
    decision = decide(candidate, base_metrics, margin)
    violations = violation_metrics(detlogs, zones) if detlogs is not None and zones is not None else None
    report = EvaluationReport(
        candidate=candidate,
        baseline=base_metrics,
        decision=decision,
        violations=violations,
        warnings=warnings,
        plots=[],
    )
    plots.insert(0, _plot_ap(report, out_dir / "ap_per_class.png"))
    report = report.model_copy(update={"plots": [str(p) for p in plots]})
    (out_dir / "report.json").write_text(
        json.dumps(report.model_dump(mode="json"), indent=1) + "\n", encoding="utf-8"
    )
    markdown = out_dir / "report.md"
    markdown.write_text(render_report(report), encoding="utf-8")
    return report, markdown
