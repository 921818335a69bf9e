"""Plots and report.md for a finished experiment (matplotlib, Agg backend, PNG files).

The report holds: training curves with the CCP projections marked; the covering radius of each
training class's embeddings by its proxies over training, in the Lipschitz-normalized space the
loss uses, and the nearest-proxy accuracy (``experiments/covering.py``), with a plain sentence
when a fold's proxies are not near their classes, or a sentence saying why there is none;
t-SNE panels of the test embeddings and, separately, of the training embeddings with the
proxies of their classes (proxies are training-class objects); and the test queries the
retrieval metrics leave out (no relevant reference).
"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402  (a scikit-learn dependency)

from ccp.metrics import lipschitz_normalize  # noqa: E402

LEGEND_MAX_CLASSES = 20  # one legend entry per class up to this many classes (tab20 colours)
LISTED_MAX_CLASSES = 40  # skipped-query classes named in report.md


def _save(fig, path):
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training_curves(fold_logs, path):
    """Writes :func:`training_curves_figure` to ``path`` (PNG)."""
    _save(training_curves_figure(fold_logs), path)


def training_curves_figure(fold_logs):
    """Loss and validation MAP@R per epoch for each fold, projection epochs marked.

    Args:
      fold_logs: list of ``{"name": str, "epochs": [epoch records], "projections": [events]}``;
        an epoch record has "epoch", "loss" and optionally "map_at_r"; a projection event has
        "epoch".
    Returns:
      the figure: axes[0] the loss, axes[1] the validation MAP@R (%, within 0-100); whole
      epochs on both x axes.
    """
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(11, 4))
    for index, log in enumerate(fold_logs):
        color = f"C{index % 10}"
        epochs = [r["epoch"] for r in log["epochs"]]
        ax_loss.plot(epochs, [r["loss"] for r in log["epochs"]], color=color, label=log["name"])
        with_map = [r for r in log["epochs"] if r.get("map_at_r") is not None]
        ax_map.plot(
            [r["epoch"] for r in with_map], [100 * r["map_at_r"] for r in with_map],
            color=color, label=log["name"],
        )
        for event in log["projections"]:
            for axis in (ax_loss, ax_map):
                axis.axvline(event["epoch"], color=color, linestyle=":", linewidth=0.8)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    ax_map.set(xlabel="epoch", ylabel="validation MAP@R (%)",
               title="Validation MAP@R (dotted: CCP projections)")
    low, high = ax_map.get_ylim()  # a percentage: the axis stays within 0-100
    ax_map.set_ylim(max(low, 0.0), min(high, 100.0))
    for axis in (ax_loss, ax_map):
        axis.grid(alpha=0.3)
        integer_epochs(axis)
        if fold_logs:
            axis.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --- covering radius of the training classes by their proxies -----------------------------------
def no_projection_sentence(log):
    """The sentence for a fold whose CCP schedule never projected."""
    epochs = len(log["epochs"])
    return (f"{log['name']}: no CCP projection happened in its {epochs} epoch(s) (the schedule "
            "never ran out of patience), so its proxies stayed the initial k-center picks; "
            "its radius curve shows how well they keep covering the training classes.")


def radius_notes(fold_logs):
    """Sentences on the covering-radius figure: folds without projections, or no measurement."""
    if not any(log.get("covering_radius") for log in fold_logs):
        return ["The covering radius of the training classes was not measured in this run "
                "(--radius_images=0, or a run folder from before it was measured)."]
    return [no_projection_sentence(log) for log in fold_logs if not log["projections"]]


NEAR_PROXY_ACCURACY = 0.5  # below it at the best epoch, report.md says the proxies are astray


def _normalized(records):
    """Whether every record has the normalized-space values (run folders before them do not)."""
    return bool(records) and all(r.get("normalized_mean") is not None for r in records)


def _radius_keys(records):
    """``(mean key, max key)`` of the space plotted: normalized when measured, else raw."""
    return ("normalized_mean", "normalized_max") if _normalized(records) else ("mean", "max")


def _has_accuracy(records):
    return any(r.get("nearest_proxy_accuracy") is not None for r in records)


def integer_epochs(axis):
    """Epoch ticks at whole numbers (a 2-epoch run gets 1 and 2, not 1.25, 1.5, ...)."""
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))


def covering_radius_figure(fold_logs):
    """Figure: left, the training classes' covering radius by their proxies in the
    Lipschitz-normalized space the loss uses (mean over classes solid, max dashed); right, the
    nearest-proxy accuracy (how often a training image's nearest proxy of the whole bank is one
    of its class's) with chance dotted. Per epoch, projections as dotted verticals, the final
    model (the best epoch's weights and proxies) as a cross at the best epoch. Records from
    before the normalized values were measured are drawn in raw space (the axis says so).

    Args:
      fold_logs: list of ``{"name", "epochs", "projections", "covering_radius"}`` with
        ``covering_radius`` the series of :class:`experiments.covering.CoveringRadiusMonitor`.
    Returns:
      the matplotlib figure (axes[0] radius, axes[1] accuracy when measured), or None when no
      fold has a measurement.
    """
    logs = [log for log in fold_logs if log.get("covering_radius")]
    if not logs:
        return None
    every = [r for log in logs for r in log["covering_radius"]]
    with_accuracy = _has_accuracy(every)
    fig, axes = plt.subplots(1, 2 if with_accuracy else 1, figsize=(12 if with_accuracy else 7,
                                                                    4.2), squeeze=False)
    ax, ax_acc = axes[0][0], (axes[0][1] if with_accuracy else None)
    mean_key, max_key = _radius_keys(every)
    for index, log in enumerate(logs):
        color = f"C{index % 10}"
        points = [r for r in log["covering_radius"] if r["point"] == "epoch"]
        epochs = [r["epoch"] for r in points]
        ax.plot(epochs, [r[mean_key] for r in points], color=color,
                marker="o", markersize=3, label=f"{log['name']} mean over classes")
        ax.plot(epochs, [r[max_key] for r in points], color=color,
                linestyle="--", linewidth=1, label=f"{log['name']} max over classes")
        finals = [r for r in log["covering_radius"] if r["point"] == "final"]
        for final in finals:
            ax.plot([final["epoch"]], [final[mean_key]], color=color, marker="X", markersize=8,
                    linestyle="none", label=f"{log['name']} final model (best epoch), mean")
        if ax_acc is not None:
            measured = [r for r in points if r.get("nearest_proxy_accuracy") is not None]
            ax_acc.plot([r["epoch"] for r in measured],
                        [100 * r["nearest_proxy_accuracy"] for r in measured], color=color,
                        marker="o", markersize=3, label=f"{log['name']}")
            for final in (r for r in finals if r.get("nearest_proxy_accuracy") is not None):
                ax_acc.plot([final["epoch"]], [100 * final["nearest_proxy_accuracy"]],
                            color=color, marker="X", markersize=8, linestyle="none",
                            label=f"{log['name']} final model (best epoch)")
            chances = [r["chance"] for r in measured if r.get("chance") is not None]
            if chances:
                ax_acc.axhline(100 * chances[-1], color=color, linestyle="-.", linewidth=0.8,
                               label=f"{log['name']} chance (1 / classes)")
        for number, event in enumerate(log["projections"]):
            for axis in (a for a in (ax, ax_acc) if a is not None):
                axis.axvline(event["epoch"], color=color, linestyle=":", linewidth=1,
                             label=f"{log['name']} CCP projection" if number == 0 else None)
    notes = [no_projection_sentence(log) for log in logs if not log["projections"]]
    space = ("Lipschitz-normalized space, as the loss sees it" if mean_key.startswith("normal")
             else "raw embedding space (run from before normalized values)")
    ax.set(xlabel="epoch (measured after the epoch's projection, if any)",
           ylabel=f"radius ({space})",
           title="Covering radius of each training class by its proxies")
    if ax_acc is not None:
        ax_acc.set(xlabel="epoch", ylabel="training images (%)", ylim=(0, 100),
                   title="Nearest proxy (whole bank) is one of the image's class")
    for axis in (a for a in (ax, ax_acc) if a is not None):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="best")
        integer_epochs(axis)
    if notes:
        text = "\n".join(f"{log['name']}: no CCP projection happened" for log in logs
                         if not log["projections"])
        ax.text(0.01, 0.01, text, transform=ax.transAxes, fontsize=8, va="bottom",
                bbox=dict(facecolor="white", alpha=0.8, edgecolor="0.7"))
    fig.tight_layout()
    return fig


def plot_covering_radius(fold_logs, path):
    """Writes the covering-radius figure; returns its sentences (``[]`` when all projected).

    No file is written when nothing was measured: the returned sentence says so instead.
    """
    fig = covering_radius_figure(fold_logs)
    if fig is not None:
        _save(fig, path)
    return radius_notes(fold_logs)


def best_epoch_record(log):
    """The covering record of the model a fold kept: its "final" record (the best epoch's
    weights and proxies, measured after training), else the last epoch record; None without."""
    series = log.get("covering_radius") or []
    finals = [r for r in series if r["point"] == "final"]
    return (finals or series or [None])[-1]


def proxy_placement_notes(fold_logs, threshold=NEAR_PROXY_ACCURACY):
    """Plain sentences for folds whose proxies are not near their classes at the best epoch:
    nearest-proxy accuracy below ``threshold`` (with the value and chance)."""
    notes = []
    for log in fold_logs:
        record = best_epoch_record(log)
        if record is None or record.get("nearest_proxy_accuracy") is None:
            continue
        accuracy, chance = record["nearest_proxy_accuracy"], record.get("chance")
        if accuracy >= threshold:
            continue
        versus = f" (chance: {100 * chance:.2f} %)" if chance else ""
        notes.append(
            f"**{log['name']}: the proxies are not near their classes.** At the best epoch "
            f"({record['epoch']}), only {100 * accuracy:.1f} % of the sampled training images "
            f"have a proxy of their own class as their nearest proxy{versus}; a proxy-based "
            "reading of this model (proxies as class representatives) does not hold.")
    return notes


def radius_table(fold_logs):
    """Markdown: per fold, projections, the training classes' radius after the last projection
    and for the final model (normalized space when measured), nearest-proxy accuracy."""
    every = [r for log in fold_logs for r in (log.get("covering_radius") or [])]
    mean_key, max_key = _radius_keys(every)
    space = "normalized" if mean_key.startswith("normal") else "raw"
    lines = [f"| fold | projections | radius after the last projection ({space}, mean / max) | "
             f"final model ({space}, mean / max) | nearest-proxy accuracy, final (chance) | "
             "images |", "|---|---|---|---|---|---|"]
    for log in fold_logs:
        series = log.get("covering_radius") or []
        projected = [r for r in series if r["projection"]]
        final = best_epoch_record(log)

        def cell(records):
            return (f"{records[-1][mean_key]:.4f} / {records[-1][max_key]:.4f}" if records
                    else "n/a")

        accuracy = "n/a"
        if final is not None and final.get("nearest_proxy_accuracy") is not None:
            accuracy = f"{100 * final['nearest_proxy_accuracy']:.1f} %"
            if final.get("chance"):
                accuracy += f" ({100 * final['chance']:.2f} %)"
        finals = [r for r in series if r["point"] == "final"]
        images = series[-1]["images"] if series else 0
        lines.append(f"| {log['name']} | {len(log['projections'])} | {cell(projected)} | "
                     f"{cell(finals)} | {accuracy} | {images} |")
    return "\n".join(lines)


# --- t-SNE ---------------------------------------------------------------------------------------
def _class_colors(labels):
    """``(classes sorted, colour of each class)``: tab20 by position among the classes."""
    classes = np.unique(labels)
    cmap = plt.get_cmap("tab20")
    return classes, {c: cmap(i % 20) for i, c in enumerate(classes)}


def _tsne(points, seed):
    """2-D t-SNE of normalized ``[N, D]`` points (perplexity fitted to small sets).

    One OpenMP thread: the same coordinates on every machine, and no spinning threads on a
    busy host (the plots hold at most a few thousand points).
    """
    stacked = lipschitz_normalize(np.asarray(points, np.float32))
    perplexity = float(min(30.0, max(2.0, (len(stacked) - 1) / 3.0)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    with threadpool_limits(limits=1):
        return tsne.fit_transform(stacked)


def _sample(count, max_points, seed):
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(count)[:max_points])


def _class_legend(ax, classes, colors, name, extra=()):
    """One legend entry per class (<= LEGEND_MAX_CLASSES), else a note on the axes."""
    handles = list(extra)
    if len(classes) <= LEGEND_MAX_CLASSES:
        handles = [Line2D([], [], marker="o", linestyle="none", color=colors[c],
                          label=f"{name} {c}") for c in classes] + handles
    else:
        ax.text(0.01, 0.01, f"{len(classes)} classes: no legend; colours repeat every 20 "
                "classes (tab20 by class order)", transform=ax.transAxes, fontsize=7,
                va="bottom", bbox=dict(facecolor="white", alpha=0.8, edgecolor="0.7"))
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5),
                  title=None if len(classes) > LEGEND_MAX_CLASSES else name + "es")


def tsne_figure(test, train_sample=None, proxies=None, max_points=1500, seed=0, fold=0):
    """t-SNE panels: the test embeddings; and the training embeddings with their proxies.

    Args:
      test: ``Embedded`` test queries ``[N, D]`` with class ids ``[N]``.
      train_sample: ``Embedded`` training embeddings with class indices of the proxy bank, or
        None (then no proxy panel).
      proxies: ``Embedded`` proxies ``[P, D]`` with their class indices, or None.
      max_points: embeddings drawn per panel (a seeded sample).
      fold: the fold whose model made the embeddings (titles).
    Returns:
      the matplotlib figure: axes[0] the test panel; axes[1] the proxy panel when both
      ``train_sample`` and ``proxies`` are given.
    """
    with_proxies = train_sample is not None and proxies is not None
    fig, axes = plt.subplots(1, 2 if with_proxies else 1, figsize=(15 if with_proxies else 8, 6),
                             squeeze=False)
    axes = axes[0]
    keep = _sample(len(test.labels), max_points, seed)
    coords = _tsne(test.embeddings[keep], seed)
    labels = np.asarray(test.labels)[keep]
    classes, colors = _class_colors(labels)
    axes[0].scatter(coords[:, 0], coords[:, 1], c=[colors[c] for c in labels], s=6, alpha=0.7)
    _class_legend(axes[0], classes, colors, "test class")
    axes[0].set(title=f"Test embeddings, {len(classes)} unseen classes (fold {fold} model)\n"
                      "no proxies here: proxies belong to training classes", xticks=[],
                yticks=[])
    if with_proxies:
        keep = _sample(len(train_sample.labels), max_points, seed)
        points = np.concatenate([train_sample.embeddings[keep], proxies.embeddings])
        coords = _tsne(points, seed)
        labels = np.asarray(train_sample.labels)[keep]
        proxy_labels = np.asarray(proxies.labels)
        classes, colors = _class_colors(np.concatenate([labels, proxy_labels]))
        samples, stars = coords[: len(keep)], coords[len(keep):]
        axes[1].scatter(samples[:, 0], samples[:, 1], c=[colors[c] for c in labels], s=6,
                        alpha=0.5)
        axes[1].scatter(stars[:, 0], stars[:, 1], c=[colors[c] for c in proxy_labels],
                        marker="*", s=160, edgecolors="black", linewidths=0.8, zorder=3)
        star = Line2D([], [], marker="*", linestyle="none", markersize=11, color="white",
                      markeredgecolor="black", label="proxy (its class's colour)")
        _class_legend(axes[1], classes, colors, "training class", extra=[star])
        axes[1].set(title=f"Training embeddings and their classes' proxies (fold {fold})\n"
                          "class index within the fold", xticks=[], yticks=[])
    fig.tight_layout()
    return fig


def plot_tsne(path, test, train_sample=None, proxies=None, max_points=1500, seed=0, fold=0):
    """Writes :func:`tsne_figure` to ``path``."""
    _save(tsne_figure(test, train_sample, proxies, max_points, seed, fold), path)


# --- skipped queries -----------------------------------------------------------------------------
def skipped_queries(query_labels, reference_labels=None):
    """Test queries without a relevant reference (left out of every retrieval metric, SPEC §8).

    Args:
      query_labels: int ``[N]``; reference_labels: int ``[M]``, or None when the query set is
        its own reference set (a query is then not its own reference).
    Returns:
      ``{class id: number of skipped queries}`` (sorted by class id).
    """
    query_labels = np.asarray(query_labels).reshape(-1)
    classes, counts = np.unique(query_labels, return_counts=True)
    if reference_labels is None:
        relevant = counts - 1
    else:
        ref_classes, ref_counts = np.unique(np.asarray(reference_labels).reshape(-1),
                                            return_counts=True)
        lookup = dict(zip(ref_classes.tolist(), ref_counts.tolist()))
        relevant = np.array([lookup.get(c, 0) for c in classes.tolist()])
    return {int(c): int(n) for c, n, r in zip(classes, counts, relevant) if r == 0}


def skipped_queries_section(fold_result):
    """Markdown lines naming the skipped test queries (the same for every fold: labels only)."""
    reference = fold_result.reference
    skipped = skipped_queries(fold_result.query.labels,
                              None if reference is None else reference.labels)
    total, count = len(fold_result.query.labels), sum(skipped.values())
    reported = fold_result.test_metrics.get("num_skipped_queries")
    lines = ["## Skipped queries", ""]
    if reported is not None and int(reported) != count:
        lines.append(f"Warning: the retrieval metrics report {int(reported)} skipped queries, "
                     f"the test labels {count}.")
    if not count:
        lines.append(f"No query was skipped: each of the {total} test queries has at least one "
                     "relevant reference.")
        return lines
    where = ("other image of its class in the test set" if reference is None
             else "image of its class in the gallery")
    named = [f"class {c} ({n} quer{'y' if n == 1 else 'ies'})"
             for c, n in list(skipped.items())[:LISTED_MAX_CLASSES]]
    more = len(skipped) - len(named)
    lines.append(f"{count} of {total} test queries have no {where} and are left out of every "
                 f"retrieval metric (means over {total - count} queries): " + ", ".join(named)
                 + (f", and {more} more classes." if more else "."))
    return lines


# --- report.md -----------------------------------------------------------------------------------
def write_report(output_dir, title, table_markdown, figures, notes=()):
    """Writes ``output_dir/report.md``.

    Args:
      figures: ``(caption, filename or None, [sentences])``: a section per figure; a None file
        means no plot (its sentences say why).
      notes: markdown lines after the table.
    """
    lines = [f"# {title}", "", table_markdown, ""]
    lines.extend(notes)
    for caption, filename, sentences in figures:
        lines += ["", f"## {caption}", ""]
        lines += [s + "\n" for s in sentences]
        if filename is not None:
            lines.append(f"![{caption}]({filename})")
    path = os.path.join(output_dir, "report.md")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def fold_log(fold_result):
    """``{"name", "epochs", "projections", "covering_radius"}`` of a FoldResult's training."""
    training = fold_result.training
    return {"name": f"fold {fold_result.fold}", "epochs": training.get("history", []),
            "projections": training.get("projections", []),
            "covering_radius": training.get("covering_radius", [])}


def write_experiment_report(config, results, fold_results):
    """report.md with training curves, covering radii (CCP), t-SNE panels and skipped queries.

    Args:
      results: the results dict (its table); fold_results: the last repeat's FoldResults.
    """
    output_dir = config.run.output_dir
    logs = [fold_log(r) for r in fold_results]
    figures = [("Training curves", "training_curves.png", [])]
    plot_training_curves(logs, os.path.join(output_dir, figures[-1][1]))
    notes = [f"Configuration: `{os.path.join(output_dir, 'config.json')}`.", ""]
    notes += skipped_queries_section(fold_results[0])
    if config.ccp.enabled:
        sentences = plot_covering_radius(logs, os.path.join(output_dir, "covering_radius.png"))
        measured = any(log["covering_radius"] for log in logs)
        caption = "Covering radius of the training classes by their proxies"
        sentences = [
            "Per class: the largest distance from a training image's embedding (a fixed "
            "subsample, evaluation transform) to the nearest proxy of its class, in the "
            "Lipschitz-normalized space the loss uses (raw norms grow during training, so raw "
            "distances cannot be compared across epochs); mean and max over classes, measured "
            "after every epoch (after its projection, if any). Right: how often a training "
            "image's nearest proxy of the whole bank belongs to its own class."
        ] + proxy_placement_notes(logs) + sentences
        if measured:
            sentences.append(radius_table(logs))
        figures.append((caption, "covering_radius.png" if measured else None, sentences))
    if config.run.tsne_points > 0:
        first = fold_results[0]
        figures.append((f"t-SNE (fold {first.fold} model)", "tsne.png", []))
        plot_tsne(os.path.join(output_dir, "tsne.png"), first.query, first.train_sample,
                  first.proxies, max_points=config.run.tsne_points, seed=config.protocol.seed,
                  fold=first.fold)
    return write_report(output_dir, f"{results['method']} on {results['dataset']}",
                        results["table"], figures, notes)
