"""Plots and report.md for a finished experiment (matplotlib, Agg backend, PNG files)."""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from ccp.metrics import lipschitz_normalize  # noqa: E402


def plot_training_curves(fold_logs, path):
    """Loss and validation MAP@R per epoch for each fold, projection epochs marked.

    Args:
      fold_logs: list of ``{"name": str, "epochs": [epoch records], "projections": [events]}``;
        an epoch record has "epoch", "loss" and optionally "map_at_r"; a projection event has
        "epoch".
      path: PNG file to write.
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
    for axis in (ax_loss, ax_map):
        axis.grid(alpha=0.3)
        if fold_logs:
            axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_covering_radius(fold_logs, path):
    """Covering radius of each class's pool by its proxies, before and after each projection."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for index, log in enumerate(fold_logs):
        events = [e for e in log["projections"] if "radius_after" in e]
        if not events:
            continue
        instances = np.arange(1, len(events) + 1)
        color = f"C{index % 10}"
        before = [e.get("radius_before", np.nan) for e in events]
        ax.plot(instances, before, color=color, linestyle="--", marker="o", markersize=3,
                label=f"{log['name']} before")
        ax.plot(instances, [e["radius_after"] for e in events], color=color, marker="s",
                markersize=3, label=f"{log['name']} after")
    ax.set(xlabel="projection (end of problem instance)", ylabel="mean covering radius",
           title="CCP: covering radius of the pool")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tsne(embeddings, labels, path, proxies=None, proxy_labels=None, max_points=1500, seed=0):
    """2-D t-SNE of (normalized) test embeddings, with proxies drawn as stars when given.

    Args:
      embeddings: float [N, D]; labels: int [N]; proxies: float [P, D] or None;
      proxy_labels: int [P]; max_points: embeddings sampled for the plot.
    """
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(len(embeddings))[: max_points])
    points = [embeddings[keep]]
    if proxies is not None:
        points.append(proxies)
    stacked = lipschitz_normalize(np.concatenate(points, axis=0).astype(np.float32))
    perplexity = float(min(30.0, max(2.0, (len(stacked) - 1) / 3.0)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    coords = tsne.fit_transform(stacked)
    fig, ax = plt.subplots(figsize=(6, 6))
    sample = coords[: len(keep)]
    ax.scatter(sample[:, 0], sample[:, 1], c=labels[keep] % 20, cmap="tab20", s=6, alpha=0.7)
    if proxies is not None:
        ax.scatter(coords[len(keep):, 0], coords[len(keep):, 1], c="black", marker="*", s=60,
                   label="proxies (training classes)")
        ax.legend(fontsize=8, loc="best")
    ax.set(title="t-SNE of test embeddings", xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(output_dir, title, table_markdown, figures, notes=()):
    """Writes ``output_dir/report.md`` embedding the given PNG files (paths relative to it)."""
    lines = [f"# {title}", "", table_markdown, ""]
    lines.extend(notes)
    for caption, filename in figures:
        lines += ["", f"## {caption}", "", f"![{caption}]({filename})"]
    path = os.path.join(output_dir, "report.md")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def fold_log(fold_result):
    """``{"name", "epochs", "projections"}`` of a FoldResult's training summary (in memory)."""
    training = fold_result.training
    return {"name": f"fold {fold_result.fold}", "epochs": training.get("history", []),
            "projections": training.get("projections", [])}


def write_experiment_report(config, results, fold_results):
    """report.md with training curves, covering radii (CCP) and a t-SNE of the first fold.

    Args:
      results: the results dict (its table); fold_results: the last repeat's FoldResults.
    """
    output_dir = config.run.output_dir
    logs = [fold_log(r) for r in fold_results]
    figures = [("Training curves", "training_curves.png")]
    plot_training_curves(logs, os.path.join(output_dir, figures[-1][1]))
    if config.ccp.enabled:
        figures.append(("Covering radius per CCP problem instance", "covering_radius.png"))
        plot_covering_radius(logs, os.path.join(output_dir, figures[-1][1]))
    if config.run.tsne_points > 0:
        first = fold_results[0]
        proxies = first.proxies
        figures.append((f"t-SNE of test embeddings (fold {first.fold} model)", "tsne.png"))
        plot_tsne(first.query.embeddings, first.query.labels,
                  os.path.join(output_dir, figures[-1][1]),
                  proxies=proxies.embeddings if proxies is not None else None,
                  proxy_labels=proxies.labels if proxies is not None else None,
                  max_points=config.run.tsne_points, seed=config.protocol.seed)
    notes = [f"Configuration: `{os.path.join(output_dir, 'config.json')}`."]
    return write_report(output_dir, f"{results['method']} on {results['dataset']}",
                        results["table"], figures, notes)
