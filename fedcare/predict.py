"""`fedcare predict`: per-patient outputs for new data from a saved global checkpoint.

Output columns (CSV, one row per patient, the task's id column first):
- binary tasks: `probability`, and a 0/1 `predicted_label` at the checkpoint's decision threshold when
  it has one (`decision_threshold`, the num-examples-weighted mean of the sites' Youden-optimal
  validation thresholds). When the checkpoint holds a recalibration map (`calibration`, fitted at the
  center on the sites' released validation histograms: `evaluation.recalibrate`, shared/calibration.py),
  `probability` is the recalibrated one and `uncalibrated_probability` the model's own; the map keeps the
  order of patients, so `predicted_label` is the same either way.
- survival tasks: `risk_score`, the model's log relative hazard (higher = earlier event; only its
  differences between patients are meaningful for a model whose baseline is not estimated); a model
  with K outcomes writes `risk_score_<k>`. No probability is made up from a hazard. With `--horizons
  365,730` (tabular_survival) also `survival_365`, `survival_730`: S(h) = exp(-H0(h) exp(risk_score)),
  with the Breslow baseline hazard H0 that the site estimated for this checkpoint (its state folder,
  `--encoder`; written by `fedcare evaluate` / `fedcare simulate`); empty past the site's longest follow-up.

Runs at a site: the data and the predictions never leave it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.table import Table

from server.checkpoints import load_checkpoint
from shared.calibration import CalibrationMap, sigmoid
from shared.config import config_from_dict
from shared.errors import InputError
from shared.io import write_bytes
from shared.tasks.registry import build_task


def default_encoder_dir(checkpoint: Path) -> Path | None:
    """runs/<id>/checkpoints/round_N.pt -> runs/<id>/sites/<first site with an encoder>/"""
    sites = checkpoint.resolve().parent.parent / "sites"
    found = sorted(p for p in sites.glob("*") if p.is_dir()) if sites.is_dir() else []
    return found[0] if found else None


def parse_horizons(text: str | None) -> list[float]:
    """"365,730" -> [365.0, 730.0] (each > 0); None or "" -> []."""
    if not text:
        return []
    try:
        horizons = [float(h) for h in text.split(",") if h.strip()]
    except ValueError:
        raise InputError("<command line>", "--horizons", f"comma-separated positive numbers, got {text!r}") from None
    if not horizons or any(not np.isfinite(h) or h <= 0 for h in horizons):
        raise InputError("<command line>", "--horizons", f"comma-separated positive numbers, got {text!r}")
    return horizons


def survival_columns(
    risk: np.ndarray, horizons: list[float], encoder_dir: Path | None, ckpt: dict[str, Any], checkpoint: Path
) -> dict[str, np.ndarray]:
    """risk_score (or risk_score_<k>) and, for horizons, survival_<h> from the site's baseline hazard."""
    from shared.survival_baseline import BASELINE_FILE, BaselineHazard

    if risk.ndim == 2:
        if horizons:
            raise InputError("<command line>", "--horizons", "only for single-outcome survival models")
        return {f"risk_score_{k}": risk[:, k] for k in range(risk.shape[1])}
    columns = {"risk_score": risk}
    if not horizons:
        return columns
    if encoder_dir is None:
        raise InputError(checkpoint, "encoder", "--horizons needs the site's state folder (--encoder) with its baseline hazard")
    path = Path(encoder_dir) / BASELINE_FILE
    baseline = BaselineHazard.load(path)
    made_for = (baseline.meta.get("run_id"), baseline.meta.get("round"))
    if made_for != (ckpt.get("run_id"), int(ckpt["round"])):
        raise InputError(path, "meta", f"estimated for run {made_for[0]} round {made_for[1]}, not for this checkpoint "
                                       f"(run {ckpt.get('run_id')} round {ckpt['round']}): run `fedcare evaluate` again")
    probabilities = baseline.survival(risk, np.asarray(horizons))
    columns |= {f"survival_{h:g}": probabilities[:, j] for j, h in enumerate(horizons)}
    return columns


def stored_calibration(ckpt: dict[str, Any]) -> CalibrationMap | None:
    """The checkpoint's recalibration map (None: none stored, e.g. `evaluation.recalibrate: none`)."""
    raw = ckpt.get("calibration")
    return CalibrationMap.from_dict(raw) if raw else None


def describe_calibration(cmap: CalibrationMap) -> str:
    return (f"probabilities recalibrated ({cmap.method}: sigmoid({cmap.slope:.3f} x logit + {cmap.intercept:+.3f}), "
            "fitted at the center on the sites' released validation histograms); the model's own in "
            "uncalibrated_probability")


def predict_to_csv(
    checkpoint: Path, data_dir: Path, out: Path, encoder_dir: Path | None = None, horizons: list[float] | None = None
) -> int:
    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt["config"], f"{checkpoint} (config)")
    task = build_task(cfg)
    model = task.build_model()
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    encoder_dir = encoder_dir or default_encoder_dir(checkpoint)
    if encoder_dir is None and task.site_fitted_inputs:
        raise InputError(checkpoint, "encoder", "no site encoder next to the checkpoint; pass --encoder SITE_STATE_DIR")
    ids, dataset = task.prediction_inputs(Path(data_dir), Path(encoder_dir or data_dir))
    outs = []
    with torch.inference_mode():
        for start in range(0, len(ids), 256):
            batch = [t[start : start + 256] for t in dataset.tensors]
            outs.append(task.forward(model, batch).float())
    logits = torch.cat(outs).numpy() if outs else np.zeros(0)
    if task.kind == "survival":
        frame = pd.DataFrame({task.id_column: ids, **survival_columns(logits, horizons or [], encoder_dir, ckpt, checkpoint)})
    else:
        if horizons:
            raise InputError("<command line>", "--horizons", f"only for survival tasks, not {cfg.task}")
        raw = sigmoid(logits)
        cmap = stored_calibration(ckpt)
        frame = pd.DataFrame({task.id_column: ids, "probability": cmap.apply(raw) if cmap else raw})
        threshold = ckpt.get("decision_threshold")
        if threshold is not None:  # chosen on the sites' validation data (uncalibrated scores) and stored with the model
            frame["predicted_label"] = (raw >= float(threshold)).astype(int)
        if cmap:
            frame["uncalibrated_probability"] = raw
    write_bytes(out, frame.to_csv(index=False).encode())
    return len(frame)


def predict_patient_json(checkpoint: Path, json_path: Path, encoder_dir: Path | None = None) -> dict[str, Any]:
    """`fedcare predict --patient FILE.json`: one new patient's AKI probability and RETAIN explanation
    (see shared.tasks.retain_aki.predict_patient) from a retain_aki checkpoint and a site's encoder."""
    from shared.data.visit_features import VisitEncoder
    from shared.tasks.retain_aki import ENCODER_FILE, predict_patient

    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt["config"], f"{checkpoint} (config)")
    if cfg.task != "retain_aki":
        raise InputError(checkpoint, "task", f"--patient needs a retain_aki checkpoint, this one is {cfg.task!r}")
    json_path = Path(json_path)
    if not json_path.is_file():
        raise InputError(json_path, None, "patient file not found")
    try:
        records = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(json_path, f"line {err.lineno}", f"not valid JSON ({err.msg}, column {err.colno})") from None
    except UnicodeDecodeError as err:
        raise InputError(json_path, None, f"not UTF-8 text, so not a JSON file (byte {err.start})") from None
    encoder_dir = encoder_dir or default_encoder_dir(checkpoint)
    if encoder_dir is None:
        raise InputError(checkpoint, "encoder", "no site encoder next to the checkpoint; pass --encoder SITE_STATE_DIR")
    model = build_task(cfg).build_model()
    model.load_state_dict(ckpt["state_dict"])
    encoder = VisitEncoder.load(Path(encoder_dir) / ENCODER_FILE)
    result = predict_patient(model, records, encoder, max_visits=cfg.data.max_events, source=json_path)
    raw = float(result["probability"])
    threshold = ckpt.get("decision_threshold")
    if threshold is not None:
        result["decision_threshold"] = float(threshold)
        result["predicted_label"] = int(raw >= float(threshold))
    cmap = stored_calibration(ckpt)
    if cmap:
        result["uncalibrated_probability"], result["probability"] = raw, float(cmap.apply(np.array([raw]))[0])
        result["calibration"] = cmap.to_dict()
        if threshold is not None:  # the same cut on the recalibrated scale
            result["decision_threshold"] = float(cmap.apply(np.array([float(threshold)]))[0])
    return result


def patient_tables(result: dict[str, Any], top_labs: int = 3) -> tuple[str, Table, Table]:
    """The readable form of `predict_patient_json`'s result (the full numbers are its JSON): a
    headline, a table of the visits used (oldest first) with the visit attention alpha and the
    variable attention beta (one value per embedding dimension), and a table of what each visit
    adds to the logit with its `top_labs` largest lab contributions."""
    dropped = f", {result['dropped_visits']} older dropped" if result["dropped_visits"] else ""
    headline = (f"patient {result['patient_id']}: AKI probability {result['probability']:.3f} "
                f"(logit {result['logit']:+.3f}; {result['n_visits']} visits used{dropped})")
    if "predicted_label" in result:
        headline += f"; predicted label {result['predicted_label']} at threshold {result['decision_threshold']:.3f}"
    attention = Table(title="visit attention alpha, variable attention beta (per embedding dimension)")
    attention.add_column("visit", justify="right")
    attention.add_column("visit_id")
    attention.add_column("timestamp", no_wrap=True)
    attention.add_column("alpha", justify="right")
    attention.add_column("beta")
    for t, (visit_id, stamp, alpha, beta) in enumerate(zip(result["visit_ids"], result["timestamps"], result["alpha"],
                                                           result["beta"])):
        attention.add_row(str(t + 1), visit_id, stamp.replace("T", " ")[:16], f"{alpha:.3f}", " ".join(f"{b:+.2f}" for b in beta))
    contributions = np.asarray(result["contributions"], dtype=float)  # (n_visits, n_features)
    per_visit = Table(title=f"contributions to the logit (bias {result['bias']:+.3f} + all visits' totals = logit)")
    per_visit.add_column("visit", justify="right")
    per_visit.add_column("total", justify="right")
    per_visit.add_column("largest lab contributions")
    for t, row in enumerate(contributions):
        largest = np.argsort(-np.abs(row), kind="stable")[:top_labs]
        per_visit.add_row(str(t + 1), f"{row.sum():+.3f}", ", ".join(f"{result['features'][j]} {row[j]:+.3f}" for j in largest))
    return headline, attention, per_visit
