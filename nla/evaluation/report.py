"""Writing ``nla evaluate``'s results: ``report.json`` (everything), ``report.md`` (the tables),
SVG figures and TensorBoard scalars (``tensorboard/``), all into one directory."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np

from nla.data.storage import atomic_write_bytes
from nla.evaluation.bootstrap import Interval
from nla.evaluation.svg import Series, interval_chart, render_svg


def jsonable(value):
    """``value`` with intervals as ``{value, low, high}``, numpy scalars as numbers and non-finite
    floats as None (JSON has no NaN)."""
    if isinstance(value, Interval):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cell(value) -> str:
    if isinstance(value, Interval):
        return "-" if not math.isfinite(value.value) else str(value)
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]


def markdown(report: dict) -> str:
    """The human-readable report: each check's table, its controls and what it means."""
    data, pair = report["data"], report["pair"]
    lines = [f"# nla evaluate: {pair['av']} + {pair['ar']}", "",
             f"{data['rows']} rows from {data['documents']} documents ({data['source']['kind']}); FVE = 1 - MSE / Var "
             f"with Var = {data['variance']:.4f}, these rows' own rawvar. Intervals: 95%, "
             f"{report['settings']['resamples']} bootstrap draws over documents. Explanations: greedy decoding, "
             "at most "
             f"{report['settings']['max_new_tokens']} new tokens; an answer that does not finish counts as an "
             "orthogonal prediction (MSE 2).", ""]
    trip = report.get("round_trip")
    if trip:
        lines += ["## Round trip (AV -> AR)", ""]
        lines += _table(["predictor", "FVE [95% interval]"], [[name, value] for name, value in trip["fve"].items()])
        lines += ["", f"valid answers: {trip['valid_rate']:.1%}; FVE on valid answers only: "
                      f"{_cell(trip['valid_fve'])}", ""]
        lines += _table(["paired difference", "FVE [95% interval]", ""],
                        [[name, value, "beyond noise" if value.beyond_noise else "within noise"]
                         for name, value in trip["differences"].items()]) + [""]
    transforms = report.get("transforms")
    if transforms:
        lines += ["## Transform robustness (steganography check)", "",
                  "FVE when the explanation is transformed before the AR reads it, on the rows with a valid answer "
                  "that the transform changed: rows it gave back unchanged (white space aside) and rewrites the chat "
                  "model did not return are left out and counted. difference = transformed - untransformed, paired; "
                  "FVE kept = transformed FVE / untransformed FVE on the same rows (public figures for paraphrase: "
                  "73% kept before RL, 25% after).", ""]
        lines += _table(["transform", "kind", "rows changed", "unchanged", "not returned", "FVE", "difference",
                         "FVE kept"],
                        [[name, t["kind"], t["rows"], t["unchanged"], t["failed"], t.get("fve"), t.get("difference"),
                          t.get("fve_kept")] for name, t in transforms.items()])
        lines.append("")
    detail = report.get("detail")
    if detail:
        for unit in ("tokens", "sentences"):
            lines += [f"## Detail curve: the first n {unit}", ""]
            lines += _table([f"n {unit}", "FVE [95% interval]"], [[p["n"], p["fve"]] for p in detail[unit]]) + [""]
    splice = report.get("splice")
    if splice:
        lines += ["## Causal splice (loss and KL recovered)", "",
                  f"{splice['rows']} rows; the residual after block K at the explained position replaced, rescaled to "
                  "its norm; next-token cross-entropy (nats) and KL from the clean run; recovered = the share of the "
                  f"mean ablation's CE increase (KL) that the patch undoes. {splice.get('without_answer', 0)} rows "
                  "without a valid answer are patched with the ablation (they recover nothing).", ""]
        lines += _table(["patch", "CE", "KL", "loss recovered", "KL recovered"],
                        [[name, v["ce"], v["kl"], v.get("loss_recovered"), v.get("kl_recovered")]
                         for name, v in splice["variants"].items()])
        rows = [[name, v["loss_recovered"], v["kl_recovered"]] for name, v in splice.get("differences", {}).items()]
        if "valid_only" in splice:
            rows.append(["nla, rows with a valid answer only", splice["valid_only"]["loss_recovered"],
                         splice["valid_only"]["kl_recovered"]])
        lines += [""] + _table(["", "loss recovered", "KL recovered"], rows) if rows else []
        lines.append("")
    claims = report.get("claims")
    if claims:
        lines += ["## Claim consistency", "",
                  f"{claims['claims']} claims ({claims['claims_per_explanation']:.2f} per explanation); window "
                  f"{claims['window']} positions each side, match: content-word Jaccard >= {claims['threshold']}. "
                  "Recurrence = share of a claim's neighbours repeating it; its control = the same share over the "
                  "positions of other documents. A claim made whatever the text recurs everywhere: only the excess "
                  "says neighbours agree because their text does.", ""]
        recurrence = claims["recurrence"]
        excess = recurrence.get("excess")
        lines += _table(["recurrence", "claims", "mean [95% interval]", ""],
                        [["at neighbouring positions", recurrence["claims"], recurrence.get("mean"), ""],
                         ["control: positions of other documents", "", recurrence.get("control"), ""],
                         ["excess (neighbours - control)", "", excess,
                          "" if excess is None else "beyond noise" if excess.beyond_noise else "within noise"]]) + [""]
        spread = claims["diversity"]
        if spread:
            widest = spread["widest_claim"]
            lines += [f"Across documents: explanations of different documents share "
                      f"{_cell(spread['cross_document_overlap'])} of their content words (mean Jaccard; 1 = the same "
                      f"words everywhere); the most widespread claim, \"{widest['claim']}\", is held by "
                      f"{_cell(widest['documents'])} of the documents.", ""]
        rates = [["recurring", claims["recurring"]], ["specific", claims["specific"]]]
        rates += [[f"supported: {k}", v] for k, v in claims.get("supported", {}).items()]
        lines += _table(["share of claims", "claims", "rate [95% interval]"],
                        [[name, v.get("claims"), v.get("rate")] for name, v in rates]) + [""]
    return "\n".join(lines)


def figures(report: dict) -> dict[str, str]:
    """``{file name: SVG}`` of the checks present."""
    out = {}
    trip = report.get("round_trip")
    if trip:
        rows = [(name, v.value, v.low, v.high) for name, v in trip["fve"].items()]
        out["round_trip.svg"] = interval_chart("Held-out FVE of the round trip and its controls", rows, "FVE")
    transforms = {k: v for k, v in report.get("transforms", {}).items() if "difference" in v}
    if transforms:
        rows = [(f"{name} ({t['kind'][:4]})", t["difference"].value, t["difference"].low, t["difference"].high)
                for name, t in transforms.items()]
        out["transforms.svg"] = interval_chart("FVE change when the explanation is transformed", rows,
                                               "FVE(transformed) - FVE(original)")
    recurrence = report.get("claims", {}).get("recurrence", {})
    if "excess" in recurrence:
        rows = [(label, recurrence[key].value, recurrence[key].low, recurrence[key].high)
                for label, key in (("at neighbouring positions", "mean"), ("control: other documents", "control"),
                                   ("excess (neighbours - control)", "excess"))]
        out["claims.svg"] = interval_chart("Claim recurrence beside its control", rows,
                                           "share of positions repeating the claim")
    detail = report.get("detail")
    if detail:
        series = [Series(f"first n {unit}", [(p["n"], p["fve"].value) for p in detail[unit]])
                  for unit in ("tokens", "sentences")]
        for item in series:
            out[f"detail_{item.label.split()[-1]}.svg"] = render_svg([item], "Detail curve: FVE from the first n "
                                                                     + item.label.split()[-1], "FVE", "n")
    splice = report.get("splice")
    if splice:
        rows = [(name, v["loss_recovered"].value, v["loss_recovered"].low, v["loss_recovered"].high)
                for name, v in splice["variants"].items() if "loss_recovered" in v]
        out["splice.svg"] = interval_chart("Causal splice: share of the ablation's loss recovered", rows,
                                           "loss recovered (1 = clean, 0 = mean ablation)")
    return out


def scalars(report: dict) -> list[tuple[str, float, int]]:
    """(tag, value, step) for TensorBoard: every figure at step 0, the detail curves at step n."""
    found = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, Interval):
            for key in ("value", "low", "high"):
                found.append((f"{prefix}/{key}" if key != "value" else prefix, getattr(value, key), 0))
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}/{key}", item)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found.append((prefix, float(value), 0))

    for check in ("round_trip", "transforms", "splice", "claims"):
        if check in report:
            walk(f"evaluate/{check}", report[check])
    for unit, points in report.get("detail", {}).items():
        found += [(f"evaluate/detail/{unit}_fve", p["fve"].value, int(p["n"])) for p in points]
    return [(tag, value, step) for tag, value, step in found if math.isfinite(value)]


def write_report(report: dict, directory: str | Path) -> list[Path]:
    """All of it, each file written atomically; returns the paths."""
    from torch.utils.tensorboard import SummaryWriter

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = {"report.json": json.dumps(jsonable(report), ensure_ascii=False, indent=1) + "\n",
               "report.md": markdown(report) + "\n", **figures(report)}
    paths = []
    for name, text in written.items():
        atomic_write_bytes(directory / name, text.encode("utf-8"))
        paths.append(directory / name)
    # A rerun replaces the scalars instead of adding a second event file beside the first.
    shutil.rmtree(directory / "tensorboard", ignore_errors=True)
    writer = SummaryWriter(str(directory / "tensorboard"))
    for tag, value, step in scalars(report):
        writer.add_scalar(tag, value, step)
    writer.close()
    return paths + [directory / "tensorboard"]
