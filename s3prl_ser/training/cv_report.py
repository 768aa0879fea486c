"""Aggregate per-fold test metrics into a cross-validation report (JSON, Markdown, PNG).

The paper reports the mean over the 5 folds; the standard deviation is the sample std
(ddof=1) over folds, undefined for one fold (``null`` in JSON, ``n/a`` in the reports). Other corpora report over their own folds, named with the corpus (each
fold's metrics carry a ``corpus`` record); a corpus evaluated on its official test set (one
fold) reports that set's numbers, with no std over folds. WA, UA and macro-F1 throughout.

The confusion matrix is summed over folds (every utterance is tested
exactly once in leave-one-session-out CV). Several cross-validations of the same setup with
other seeds are combined by :func:`summarize_seeds`: the mean over seeds of the 5-fold means,
and the sample std over seeds of those means.

Runs with continuous attributes (``targets.attributes``) add, per attribute, each fold's CCC,
Pearson r and RMSE (on the corpus's scale) and their mean ± std over folds, the mean CCC over
attributes likewise, the CCC of all folds' test utterances pooled, and a scatter plot of predicted
against true values over all folds' test sets (``scatter_<attribute>.png``). A run without
categories has no WA/UA and no confusion matrix.
"""

from __future__ import annotations

import csv
import json
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from s3prl_ser.fileio import atomic_write_text
from s3prl_ser.markdown import markdown_table
from s3prl_ser.training.metrics import ClassificationReport, concordance_correlation

__all__ = [
    "summarize",
    "summarize_seeds",
    "write_report",
    "write_seed_report",
    "plot_confusion",
    "plot_attribute_scatter",
    "read_attribute_predictions",
    "fold_headline",
    "mean_std_text",
]

REGRESSION_METRICS = ("ccc", "pearson", "rmse")


def _mean_std(values: Sequence[float]) -> dict[str, float | None]:
    """Mean and sample std (ddof=1) of ``values``; the std of one value is undefined: None."""
    array = np.asarray(values, dtype=float)
    std = float(np.std(array, ddof=1)) if array.size > 1 else None
    return {"mean": float(np.mean(array)), "std": std}


def mean_std_text(stats: Mapping[str, float | None], digits: int = 2) -> str:
    """``mean ± std`` of a :func:`summarize` entry, ``digits`` decimals; ``n/a`` for an undefined std.

    Example:
        >>> mean_std_text({"mean": 62.5, "std": 17.677}), mean_std_text({"mean": 70.0, "std": None})
        ('62.50 ± 17.68', '70.00 ± n/a')
        >>> mean_std_text({"mean": 0.61234, "std": 0.0456}, digits=3)
        '0.612 ± 0.046'
    """
    std = stats.get("std")
    return f"{stats['mean']:.{digits}f} ± {'n/a' if std is None else f'{std:.{digits}f}'}"


def fold_headline(metrics: Mapping[str, object]) -> str:
    """One fold's result in a progress line: its UA with categories, else its mean CCC.

    Example:
        >>> fold_headline({"ua": 0.6123, "wa": 0.6}), fold_headline({"ccc_mean": 0.41234})
        ('UA 61.23', 'CCC mean 0.412')
    """
    if "ua" in metrics:
        return f"UA {100 * float(metrics['ua']):.2f}"
    return f"CCC mean {float(metrics['ccc_mean']):.3f}"


def _nanmean_percent(values: Sequence[float]) -> float:
    """Mean in % over the folds where the class has a recall; NaN if it has none anywhere."""
    present = [v for v in values if not np.isnan(v)]
    return float(np.mean(present) * 100) if present else float("nan")


def summarize(fold_metrics: Mapping[str, dict], attribute_points: Mapping[str, np.ndarray] | None = None) -> dict:
    """Summary of ``{fold: metrics}`` where metrics is :meth:`ClassificationReport.to_dict`
    and/or :meth:`~s3prl_ser.training.metrics.RegressionReport.to_dict` (a fold's metrics file).

    Returns, with categories: per-fold WA/UA, mean/std of WA and UA (in %), mean per-class recall
    over folds (NaN recalls ignored), the summed confusion matrix and the pooled WA/UA it implies.
    With attributes: ``attributes`` (:func:`_summarize_attributes`; ``attribute_points``, the
    pooled ``{name: (N, 2) [true, predicted]}`` of :func:`read_attribute_predictions`, adds each
    attribute's pooled CCC).
    """
    if not fold_metrics:
        raise ValueError("no fold results to summarize")
    folds = sorted(fold_metrics)
    if "labels" in fold_metrics[folds[0]]:
        summary = _summarize_categories(fold_metrics, folds)
    else:  # attributes only
        summary = {
            "folds": {f: {"num_utterances": fold_metrics[f]["num_utterances"]} for f in folds},
            "corpus": _corpus(fold_metrics, folds),
        }
    if "attributes" in fold_metrics[folds[0]]:
        summary["attributes"] = _summarize_attributes(fold_metrics, folds, attribute_points or {})
    return summary


def _summarize_attributes(fold_metrics: Mapping[str, dict], folds: list[str], points: Mapping[str, np.ndarray]) -> dict:
    """``names``; ``folds``: each fold's ``{name: {ccc, pearson, rmse, n}}`` and ``ccc_mean``;
    ``mean``: each attribute's ``{ccc, pearson, rmse}`` as mean and sample std over folds;
    ``ccc_mean`` likewise; ``pooled_ccc``: each attribute's CCC over all folds' utterances pooled
    (when ``points`` has them); ``scale``: the corpus scale the values are on."""
    names = list(fold_metrics[folds[0]]["attributes"])
    for fold in folds:
        if list(fold_metrics[fold]["attributes"]) != names:
            raise ValueError(f"{fold} scores attributes {list(fold_metrics[fold]['attributes'])}, {folds[0]} {names}")
    per_fold = {f: {**fold_metrics[f]["attributes"], "ccc_mean": fold_metrics[f]["ccc_mean"]} for f in folds}
    summary = {
        "names": names,
        "scale": fold_metrics[folds[0]].get("attribute_scale"),
        "folds": per_fold,
        "mean": {
            name: {m: _mean_std([per_fold[f][name][m] for f in folds]) for m in REGRESSION_METRICS} for name in names
        },
        "ccc_mean": _mean_std([per_fold[f]["ccc_mean"] for f in folds]),
    }
    if points:
        summary["pooled_ccc"] = {name: _pooled_ccc(points[name]) for name in names if name in points}
    return summary


def _pooled_ccc(pairs: np.ndarray) -> float:
    known = ~np.isnan(pairs[:, 0])
    return concordance_correlation(pairs[known, 1], pairs[known, 0])


def read_attribute_predictions(path: str | os.PathLike, names: Sequence[str]) -> dict[str, np.ndarray]:
    """A fold's ``<split>_<fold>_attributes.csv`` (columns ``file``, ``<name>_true``...,
    ``<name>_pred``...; an empty true value is unknown) as ``{name: (N, 2) [true, predicted]}``,
    NaN where the true value is unknown.

    Raises:
        ValueError: the file lacks a column of ``names`` (file and column named).
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns = [f"{name}_{kind}" for name in names for kind in ("true", "pred")]
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: no column {', '.join(missing)}")
    return {
        name: np.array(
            [[float(row[f"{name}_true"] or "nan"), float(row[f"{name}_pred"])] for row in rows], dtype=float
        ).reshape(-1, 2)
        for name in names
    }


def _summarize_categories(fold_metrics: Mapping[str, dict], folds: list[str]) -> dict:
    """The categorical part of :func:`summarize`."""
    labels = fold_metrics[folds[0]]["labels"]
    for fold in folds:
        if fold_metrics[fold]["labels"] != labels:
            raise ValueError(f"{fold} uses labels {fold_metrics[fold]['labels']}, {folds[0]} uses {labels}")
    confusion = np.sum([np.asarray(fold_metrics[f]["confusion"]) for f in folds], axis=0)
    recall = {label: _nanmean_percent([fold_metrics[f]["recall"][label] for f in folds]) for label in labels}
    support = confusion.sum(axis=1)
    # As in each fold's UA: a class absent from every test set has no recall, not recall 0.
    pooled_recall = np.diag(confusion)[support > 0] / support[support > 0]
    # From the confusion matrix, so metrics written before F1 was recorded report it too.
    f1 = {
        f: ClassificationReport(tuple(labels), np.asarray(fold_metrics[f]["confusion"])).macro_f1 * 100 for f in folds
    }
    return {
        "folds": {
            f: {
                "wa": fold_metrics[f]["wa"] * 100,
                "ua": fold_metrics[f]["ua"] * 100,
                "macro_f1": f1[f],
                "num_utterances": fold_metrics[f]["num_utterances"],
            }
            for f in folds
        },
        "corpus": _corpus(fold_metrics, folds),
        "wa": _mean_std([fold_metrics[f]["wa"] * 100 for f in folds]),
        "ua": _mean_std([fold_metrics[f]["ua"] * 100 for f in folds]),
        "macro_f1": _mean_std([f1[f] for f in folds]),
        "recall": recall,
        "labels": labels,
        "confusion": confusion.tolist(),
        "pooled": {
            "wa": float(np.trace(confusion) / confusion.sum() * 100),
            "ua": float(np.mean(pooled_recall) * 100),
            "macro_f1": ClassificationReport(tuple(labels), confusion).macro_f1 * 100,
        },
    }


def _corpus(fold_metrics: Mapping[str, dict], folds: list[str]) -> dict:
    """The corpus record the folds' metrics carry (the first fold's; ``IEMOCAP``'s five folds
    for metrics written before runs recorded it)."""
    record = next((fold_metrics[f]["corpus"] for f in folds if fold_metrics[f].get("corpus")), None)
    if record is None:
        return {"name": None, "num_folds": None, "official_test": None}
    return {key: record.get(key) for key in ("name", "num_folds", "official_test")}


def _protocol_line(summary: dict) -> str:
    """What the numbers are over: the corpus, how many of its folds, or its official test set."""
    corpus = summary.get("corpus") or {}
    name, total, official = corpus.get("name"), corpus.get("num_folds"), corpus.get("official_test")
    run = len(summary["folds"])
    if official:
        return f"{name or 'Corpus'}: official test set {official} (one split; no std over folds)."
    of = f" of {total}" if total else ""
    if run == 1:
        return f"{name + ': ' if name else ''}1{of} fold(s); one fold run, so its std is undefined (n/a)."
    return f"{name + ': ' if name else ''}{run}{of} fold(s); mean ± sample std over the {run} fold(s) run."


def summarize_seeds(summaries: Mapping[int, dict]) -> dict:
    """Combine :func:`summarize` results of runs that differ only in their seed.

    Returns, in %: ``wa``/``ua`` as the mean over seeds of the 5-fold means with the sample std
    over seeds; ``seeds`` (each seed's 5-fold means); ``folds`` (each fold's mean over seeds);
    ``labels`` and the confusion matrix summed over seeds and folds.

    Example:
        >>> one = lambda ua: {"wa": {"mean": ua}, "ua": {"mean": ua}, "folds": {"fold1": {"wa": ua, "ua": ua}},
        ...                   "labels": ["a", "b"], "confusion": [[1, 0], [0, 1]]}
        >>> combined = summarize_seeds({0: one(70.0), 1: one(74.0)})
        >>> combined["ua"]["mean"], round(combined["ua"]["std"], 3), combined["confusion"]
        (72.0, 2.828, [[2, 0], [0, 2]])
    """
    if not summaries:
        raise ValueError("no seed results to combine")
    seeds = sorted(summaries)
    labels = summaries[seeds[0]]["labels"]
    folds = sorted(summaries[seeds[0]]["folds"])
    for seed in seeds:
        if summaries[seed]["labels"] != labels or sorted(summaries[seed]["folds"]) != folds:
            raise ValueError(f"seed {seed} ran other folds or labels than seed {seeds[0]}")
    return {
        "seeds": {seed: {m: summaries[seed][m]["mean"] for m in ("wa", "ua")} for seed in seeds},
        "wa": _mean_std([summaries[seed]["wa"]["mean"] for seed in seeds]),
        "ua": _mean_std([summaries[seed]["ua"]["mean"] for seed in seeds]),
        "folds": {
            f: {m: float(np.mean([summaries[seed]["folds"][f][m] for seed in seeds])) for m in ("wa", "ua")}
            for f in folds
        },
        "labels": labels,
        "confusion": np.sum([np.asarray(summaries[seed]["confusion"]) for seed in seeds], axis=0).tolist(),
    }


def plot_confusion(
    confusion: Sequence[Sequence[int]], labels: Sequence[str], path: str | os.PathLike, title: str = ""
) -> Path:
    """Row-normalised confusion matrix with counts, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(confusion)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.6, 4.0), dpi=120)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                f"{rates[i, j]:.2f}\n({counts[i, j]})",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if rates[i, j] > 0.6 else "black",
            )
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(textwrap.fill(title or "confusion matrix (recall per row)", 48), fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def write_report(
    summary: dict,
    out_dir: str | os.PathLike,
    title: str,
    attribute_points: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and, with categories, ``confusion.png`` into
    ``out_dir``; with attributes also their tables and, for each attribute ``attribute_points``
    holds (``{name: (N, 2) [true, predicted]}`` pooled over folds), ``scatter_<name>.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", _protocol_line(summary), ""]
    if "labels" in summary:
        lines += _category_lines(summary)
    scatters: dict[str, Path] = {}
    if "attributes" in summary:
        lines += _attribute_lines(summary)
        official = (summary.get("corpus") or {}).get("official_test")
        tested = f"test set {official}" if official else "all folds' test utterances"
        for name, pairs in (attribute_points or {}).items():
            scatters[f"scatter_{name}"] = plot_attribute_scatter(
                pairs[:, 0],
                pairs[:, 1],
                name,
                out_dir / f"scatter_{name}.png",
                scale=(summary["attributes"].get("scale") or {}).get(name),
                title=f"{title}: {name}, {tested}",
            )
            lines += [f"![{name}: predicted against true](scatter_{name}.png)", ""]
    if "labels" not in summary:
        return {**_write(out_dir, summary, lines, None), **scatters}
    return {**_write(out_dir, summary, lines, f"{title}: summed over folds"), **scatters}


def _attribute_lines(summary: dict) -> list[str]:
    """The attribute tables of ``results.md``: CCC per fold, then each metric's mean ± std."""
    attributes = summary["attributes"]
    names = attributes["names"]
    official = (summary.get("corpus") or {}).get("official_test")
    rows = [
        [
            f"{fold} (official test {official})" if official else fold,
            *(f"{m[name]['ccc']:.3f}" for name in names),
            f"{m['ccc_mean']:.3f}",
        ]
        for fold, m in attributes["folds"].items()
    ]
    if not official:
        rows.append(
            [
                "**mean ± std**",
                *(f"**{mean_std_text(attributes['mean'][name]['ccc'], 3)}**" for name in names),
                f"**{mean_std_text(attributes['ccc_mean'], 3)}**",
            ]
        )
    lines = ["Concordance correlation (CCC) of the test predictions:", ""]
    lines += markdown_table(["fold", *(f"CCC {name}" for name in names), "CCC mean"], rows)
    scale = attributes.get("scale") or {}
    pooled = attributes.get("pooled_ccc") or {}
    if official:  # one test set: its values, nothing to spread or pool
        header = ["attribute", "scale", "CCC", "Pearson r", "RMSE"]
        lines += ["", f"Per attribute on {official} (RMSE on the corpus's scale):", ""]
    else:
        header = ["attribute", "scale", "CCC", "Pearson r", "RMSE", "CCC pooled over folds"]
        lines += ["", "Per attribute, mean ± sample std over folds (RMSE on the corpus's scale):", ""]
    rows = []
    for name in names:
        stats = [attributes["mean"][name][m] for m in REGRESSION_METRICS]
        row = [name, "-" if name not in scale else f"{scale[name][0]:g}-{scale[name][1]:g}"]
        row += [f"{s['mean']:.3f}" if official else mean_std_text(s, 3) for s in stats]
        rows.append(row if official else [*row, "-" if name not in pooled else f"{pooled[name]:.3f}"])
    return lines + markdown_table(header, rows) + [""]


def plot_attribute_scatter(
    truth: np.ndarray,
    predicted: np.ndarray,
    name: str,
    path: str | os.PathLike,
    scale: Sequence[float] | None = None,
    title: str = "",
) -> Path:
    """Predicted against true values of one attribute (unknown true values left out), with the
    identity line and the CCC, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth, predicted = np.asarray(truth, dtype=float), np.asarray(predicted, dtype=float)
    known = ~np.isnan(truth)
    truth, predicted = truth[known], predicted[known]
    fig, ax = plt.subplots(figsize=(4.4, 4.2), dpi=120)
    ax.scatter(truth, predicted, s=9, alpha=0.5, edgecolors="none")
    lo, hi = scale if scale else (min(truth.min(), predicted.min()), max(truth.max(), predicted.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1, linestyle="--", label="predicted = true")
    # one range on both axes (predictions may leave the scale), so the identity line is the diagonal
    limits = (min(lo, predicted.min()), max(hi, predicted.max()))
    ax.set_xlim(*limits)
    ax.set_ylim(*limits)
    ax.set_xlabel(f"true {name}")
    ax.set_ylabel(f"predicted {name}")
    ccc = concordance_correlation(predicted, truth)
    ax.set_title(textwrap.fill(title or name, 48) + f"\nCCC {ccc:.3f} over {truth.size} utterances", fontsize=9)
    ax.set_aspect("equal", adjustable="box")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _category_lines(summary: dict) -> list[str]:
    """The categorical tables of ``results.md`` (WA, UA, macro-F1, recall, confusion)."""
    labels = summary["labels"]
    official = (summary.get("corpus") or {}).get("official_test")
    rows = [
        [
            f"{fold} (official test {official})" if official else fold,
            m["num_utterances"],
            f"{m['wa']:.2f}",
            f"{m['ua']:.2f}",
            _pct(m.get("macro_f1")),
        ]
        for fold, m in summary["folds"].items()
    ]
    if not official:  # one official test set: its numbers are the result, there is nothing to spread
        f1 = summary.get("macro_f1")  # absent from summaries written before F1 was reported
        rows.append(
            [
                "**mean ± std**",
                "",
                f"**{mean_std_text(summary['wa'])}**",
                f"**{mean_std_text(summary['ua'])}**",
                f"**{mean_std_text(f1) if f1 else '-'}**",
            ]
        )
    lines = markdown_table(["fold", "utterances", "WA (%)", "UA (%)", "macro-F1 (%)"], rows)
    lines += [
        "",
        "Per-class recall, mean over folds (%): "
        + ", ".join(f"{label} {summary['recall'][label]:.2f}" for label in labels),
        "",
        "Confusion matrix summed over folds (rows: reference, columns: predicted):",
        "",
    ]
    lines += markdown_table(["", *labels], [[label, *row] for label, row in zip(labels, summary["confusion"])])
    lines += [
        "",
        f"Pooled over all test utterances: WA {summary['pooled']['wa']:.2f}, "
        f"UA {summary['pooled']['ua']:.2f}." + ("" if official else " Std is the sample std over folds."),
        "",
    ]
    return lines


def _write(out_dir: Path, summary: dict, lines: list[str], confusion_title: str | None) -> dict[str, Path]:
    """``results.json`` (``summary``), ``results.md`` (``lines`` and the plot) and ``confusion.png``
    (none when ``confusion_title`` is None: no categories)."""
    paths = {"json": out_dir / "results.json", "md": out_dir / "results.md"}
    atomic_write_text(paths["json"], json.dumps(summary, indent=1))
    if confusion_title is None:
        atomic_write_text(paths["md"], "\n".join(lines))
        return paths
    paths["png"] = out_dir / "confusion.png"
    atomic_write_text(paths["md"], "\n".join(lines + ["", "![confusion matrix](confusion.png)", ""]))
    plot_confusion(summary["confusion"], summary["labels"], paths["png"], title=confusion_title)
    return paths


def write_seed_report(combined: dict, out_dir: str | os.PathLike, title: str) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and ``confusion.png`` of :func:`summarize_seeds` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(combined["seeds"])
    seeds = [[seed, f"{m['wa']:.2f}", f"{m['ua']:.2f}"] for seed, m in combined["seeds"].items()]
    seeds.append(
        [
            f"**mean ± std over {n} seeds**",
            f"**{mean_std_text(combined['wa'])}**",
            f"**{mean_std_text(combined['ua'])}**",
        ]
    )
    folds = [[fold, f"{m['wa']:.2f}", f"{m['ua']:.2f}"] for fold, m in combined["folds"].items()]
    lines = [f"# {title}", ""]
    lines += markdown_table(["seed", "WA (%), 5-fold mean", "UA (%), 5-fold mean"], seeds)
    lines += [""]
    lines += markdown_table(["fold", "WA (%), mean over seeds", "UA (%), mean over seeds"], folds)
    lines += [
        "",
        "Each seed's folds are in `seed<N>/results.md`. Std is the sample std over seeds of the 5-fold means.",
    ]
    return _write(out_dir, combined, lines, f"{title}: summed over seeds and folds")
