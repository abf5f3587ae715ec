"""Run reports: report.json, a readable report.md, PNG plots and the TensorBoard projector."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from reprlearn.data.imageset import BASELINE_SIDE
from reprlearn.evaluation import figures as plots
from reprlearn.evaluation.projector import write_projector
from reprlearn.metrics.retrieval import nearest_neighbours

RETRIEVAL_ROWS = ("precision_at_1", "r_precision", "map_at_r", "recall_at_1", "recall_at_2", "recall_at_4",
                  "recall_at_8", "nmi")
VERIFICATION_ROWS = ("roc_auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "threshold", "accuracy", "far", "frr")


def _pca_title(metrics: dict) -> str:
    pca = metrics.get("baseline_pca")
    return f"PCA-{pca['dim']} of pixels ({pca['metric']}; fit on training images)" if pca else "PCA of pixels"


def _files_section(report: dict) -> list[str]:
    """A run on files: how many there were, and every file left out with why (the first 20 named here)."""
    if "files" not in report:
        return []
    f = report["files"]
    skipped = f["skipped_when_indexed"] + [[name, "failed to decode in training"] for name in f["skipped_in_training"]]
    skipped += [[name, "failed to decode at evaluation"] for name in report["metrics"].get("skipped_files", [])]
    dropped = f"; classes dropped (no readable image): {f['dropped_classes']}" if f["dropped_classes"] else ""
    lines = ["## Files", "", f"{f['items']} images in {f['classes']} classes; {f['ignored_files']} other files "
             f"ignored; {len(skipped)} unusable images skipped{dropped}. Raw-pixel baselines compare the images shrunk "
             f"to at most {BASELINE_SIDE} pixels a side.", ""]
    lines += [f"- `{name}`: {why}" for name, why in skipped[:20]]
    lines += [f"- … and {len(skipped) - 20} more (report.json lists them all)"] if len(skipped) > 20 else []
    return lines + [""]


def _markdown(report: dict, figures: dict[str, str]) -> str:
    m, d, t = report["metrics"], report["data"], report["train"]
    left_out = d.get("classes_left_out")
    lines = [f"# reprlearn run: {d['name']}, {d['protocol']}", "",
             f"Train classes {d['train_classes']} ({d['n_train']} images, {d['n_val']} for validation); "
             f"test classes {d['test_classes']} ({d['n_test']} images)."
             + (f" Left out, fewer than 2 images each (nothing to test them on): {left_out}." if left_out else ""),
             "",
             "## Retrieval on the test protocol", "",
             f"| metric | model | raw pixels, L2 | raw pixels, cosine | {_pca_title(m)} |", "|---|---|---|---|---|"]
    cosine, pca = m.get("baseline_raw_cosine", {}), m.get("baseline_pca", {})
    lines += [f"| {k} | {m['test'][k]:.4f} | {m['baseline_raw'][k]:.4f} | "
              + " | ".join(f"{part[k]:.4f}" if k in part else "–" for part in (cosine, pca)) + " |"
              for k in RETRIEVAL_ROWS]
    if "head" in m:
        head = m["head"]
        lines += ["", f"The model is a joint embedding (for classes the tower never trained on). The same tower's own "
                      f"head (`head.keras`, the SavedModel's `embed_head`; {head['dim']} dimensions) scores MAP@R "
                      f"{head['map_at_r']:.4f}, R-precision {head['r_precision']:.4f} and P@1 "
                      f"{head['precision_at_1']:.4f} on the same test items."]
    lines += ["", "## Verification on sampled test pairs", "",
              f"Threshold: {m['verification']['calibration']['note']}.", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {m['verification'][k]:.4f} |" for k in VERIFICATION_ROWS if k in m["verification"]]
    lines += ["", "## Training", "",
              f"{t['epochs']} epochs × {t['steps_per_epoch']} steps, batch {t['batch_size']}; "
              f"{t['seconds']} s of training, {t['examples_per_second']} examples/s.", ""]
    lines += _self_supervised_lines(report)
    lines += _files_section(report)
    lines += [f"## {title}\n\n![{title}]({name})\n" for title, name in figures.items()]
    return "\n".join(lines) + "\n"


def _self_supervised_lines(report: dict) -> list[str]:
    """What a self-supervised run trained with, which epoch it kept and how that epoch scored on validation."""
    ssl = report.get("self_supervised")
    if not ssl:
        return []
    kept = report["kept"]
    epoch = report["train"]["history"][kept["epoch"] - 1] if report["train"]["history"] else {}
    scores = ", ".join(f"{name} {epoch[key]:.4f}" for key, name in (
        ("val_knn_accuracy", "weighted kNN accuracy"), ("val_map_at_r", "MAP@R"),
        ("val_output_spread", "output spread")) if key in epoch)
    probe = ssl.get("linear_probe_accuracy")
    return [f"Trained without labels: {ssl['method']} (projector {ssl['projector']}, predictor "
            f"{ssl['predictor'] or 'none'}, memory {ssl['memory_size']}). Kept epoch {kept['epoch']} "
            f"({kept['keep']}{'; ' + kept['note'] if kept.get('note') else ''})"
            + (f", on validation images: {scores}" if scores else "") + "."
            + (f" A linear probe fit on training images scores {probe:.4f} accuracy on the test images."
               if probe is not None else ""), ""]


def write_unscored_report(report: dict, out: Path) -> None:
    """Writes the report of a run trained on images without labels: what it trained and kept, the training curves;
    no retrieval or verification score (there is no class to score against)."""
    figures = {}
    _add_history(figures, report, out)
    report["figures"] = figures
    d, t = report["data"], report["train"]
    lines = [f"# reprlearn run: {d['name']}, without labels", "",
             f"{d['n_train']} training images ({d['n_val']} more for validation: the output spread, so that a "
             "collapsed epoch is never kept) and no labels, so nothing is scored: embed, index or transfer the "
             "tower, or evaluate it on labelled images with `reprlearn evaluate RUN --data SOURCE`.", "",
             "## Training", "",
             f"{t['epochs']} epochs × {t['steps_per_epoch']} steps, batch {t['batch_size']}; "
             f"{t['seconds']} s of training, {t['examples_per_second']} examples/s.", ""]
    lines += _self_supervised_lines(report)
    lines += _files_section(report)
    lines += [f"## {title}\n\n![{title}]({name})\n" for title, name in figures.items()]
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _add_history(figures: dict, report: dict, out: Path) -> None:
    """The training curves, when there is a history."""
    if report["train"]["history"]:
        plots.plot_history(report["train"]["history"], out / "training.png")
        figures["Training curves"] = "training.png"


def _add_grid_and_history(figures: dict, report: dict, out: Path, test, vectors: np.ndarray, metric: str, rng,
                          cfg, caption: str, title: str) -> None:
    """The nearest-neighbour grid of random test queries, and the training curves when there is a history."""
    queries = rng.choice(len(test), size=min(cfg.eval.grid_queries, len(test)), replace=False)
    k = min(cfg.eval.grid_neighbours, len(test) - 1)
    neighbours = nearest_neighbours(vectors, k, metric, query_index=queries)
    # Only the shown images are read (decoded, for a streamed set), then the indices point into them.
    shown = np.unique(np.concatenate([queries, neighbours.reshape(-1)]))
    plots.plot_retrieval_grid(test.thumbnails(shown, 96), test.labels[shown], np.searchsorted(shown, queries),
                              np.searchsorted(shown, neighbours), out / "retrieval_grid.png", title)
    figures[caption] = "retrieval_grid.png"
    _add_history(figures, report, out)


def _add_pair_figures(figures: dict, out: Path, pairs: dict, verification: dict, caption: str) -> None:
    """The matching and non-matching pairs' distance histograms (with the threshold) and the ROC curve."""
    plots.plot_distance_histograms(pairs["distances"], pairs["match"], verification.get("threshold"),
                                   out / "distances.png")
    figures[caption] = "distances.png"
    plots.plot_roc(pairs["distances"], pairs["match"], verification["eer"], verification["roc_auc"], out / "roc.png")
    figures["ROC curve"] = "roc.png"


def write_report(report: dict, out: Path, splits, evaluation: dict, cfg) -> None:
    """Writes every report artefact of a run into `out`."""
    # The test items that were scored (a streamed file that failed to decode is not among them).
    test, embeddings = evaluation.get("test", splits.test), evaluation["embeddings"]
    rng = np.random.default_rng(cfg.data.seed)
    figures = {}

    shown = rng.choice(len(test), size=min(cfg.eval.projection_points, len(test)), replace=False)
    coords = plots.project_2d(embeddings[shown], cfg.eval.projection, cfg.data.seed)
    plots.plot_projection(coords, test.labels[shown], test.class_names, out / "projection.png",
                          f"Test embeddings ({cfg.eval.projection.upper()}, {len(shown)} points)")
    figures["2-D projection of test embeddings"] = "projection.png"

    _add_pair_figures(figures, out, evaluation["pairs"], report["metrics"]["verification"],
                      "Positive and negative pair distances")

    _add_grid_and_history(figures, report, out, test, embeddings, cfg.loss.distance, rng, cfg,
                          "Nearest-neighbour retrieval", "Nearest test neighbours (green: same class, red: other)")

    projected = rng.choice(len(test), size=min(cfg.eval.projector_points, len(test)), replace=False)
    # In the log root, where `tensorboard --logdir RUN/logs` looks for a projector beside the scalar runs.
    write_projector(out / "logs", embeddings[projected], test.labels[projected],
                    test.class_names, test.thumbnails(projected))

    report["figures"] = figures
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(_markdown(report, figures))


def _autoencoder_markdown(report: dict, figures: dict[str, str]) -> str:
    m, d, t, kind = report["metrics"], report["data"], report["train"], report["model"]["kind"]
    code_dim = report["model"]["code_dim"]
    r = m["reconstruction"]
    lines = [f"# reprlearn {kind} run: {d['name']}, {d['protocol']}", "",
             f"{d['n_train']} training images (labels unused); test classes {d['test_classes']} "
             f"({d['n_test']} images). Code size {code_dim}.", "",
             "## Reconstruction on the test images", "", "| metric | value |", "|---|---|",
             f"| MSE (pixels in [0, 1]) | {r['mse']:.5f} |", f"| PCA, {code_dim} components | {r['pca_mse']:.5f} |",
             f"| MSE / PCA MSE | {r['mse_over_pca']:.4f} |"]
    if "likelihood" in m:
        lines += [f"| {key} | {value:.2f} |" for key, value in m["likelihood"].items()]
    lines += ["", f"## Retrieval on the test protocol (cosine k-NN on {code_dim}-d codes)", "",
              f"| metric | codes | PCA-{code_dim} | raw pixels |", "|---|---|---|---|"]
    lines += [f"| {k} | {m['test'][k]:.4f} | {m['pca'][k]:.4f} | {m['baseline_raw'][k]:.4f} |"
              for k in RETRIEVAL_ROWS]
    lines += ["", "## Training", "",
              f"{t['epochs']} epochs × {t['steps_per_epoch']} steps, batch {t['batch_size']}; "
              f"{t['seconds']} s of training, {t['examples_per_second']} examples/s.", ""]
    lines += _files_section(report)
    lines += [f"## {title}\n\n![{title}]({name})\n" for title, name in figures.items()]
    return "\n".join(lines) + "\n"


def write_autoencoder_report(report: dict, out: Path, evaluation: dict, cfg, model) -> None:
    """Writes an autoencoder/VAE run's report.json, report.md and figures into `out`."""
    from scipy.stats import norm

    test, codes = evaluation["test"], evaluation["codes"]  # the test items scored (files that decoded)
    rng = np.random.default_rng(cfg.data.seed)
    figures = {}

    shown = test.pixels(rng.choice(len(test), size=min(10, len(test)), replace=False))
    pairs = np.stack([shown / 255.0, evaluation["reconstruct"](shown)])
    plots.plot_image_grid(pairs, out / "reconstructions.png", "Test images and their reconstructions",
                          ["input", "output"])
    figures["Reconstructions"] = "reconstructions.png"

    if hasattr(model, "sample"):
        samples = model.sample(64, seed=cfg.data.seed)
        plots.plot_image_grid(samples.reshape(8, 8, *samples.shape[1:]), out / "samples.png",
                              "Samples: decoded z ~ N(0, I)")
        figures["VAE samples"] = "samples.png"
        if cfg.model.code_dim == 2:
            steps = norm.ppf(np.linspace(0.05, 0.95, 12))
            z = np.array([[a, b] for b in steps[::-1] for a in steps], np.float32)
            decoded = model.decode(z).numpy()
            plots.plot_image_grid(decoded.reshape(12, 12, *decoded.shape[1:]), out / "traversal.png",
                                  "Latent traversal: z₁ left→right, z₂ bottom→top (5%–95% quantiles)")
            figures["Latent traversal"] = "traversal.png"

    _add_grid_and_history(figures, report, out, test, codes, "angular", rng, cfg,
                          "Similar-image retrieval with codes",
                          "Similar images by cosine k-NN on the codes (green: same class)")

    report["figures"] = figures
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(_autoencoder_markdown(report, figures))


def _verifier_markdown(report: dict, figures: dict[str, str]) -> str:
    m, d, t, model = report["metrics"], report["data"], report["train"], report["model"]
    columns = [("pairs as drawn, (a, b)", m["verification"])]
    if "verification_swapped_average" in m:
        columns.append(("p averaged over (a, b) and (b, a)", m["verification_swapped_average"]))
    frozen = " (tower frozen)" if model.get("initialised_from", {}).get("frozen") else ""
    lines = [f"# reprlearn verifier run ({model['verifier']}{frozen}): {d['name']}, {d['protocol']}", "",
             f"Train classes {d['train_classes']} ({d['n_train']} images, {d['n_val']} for validation); "
             f"test classes {d['test_classes']} ({d['n_test']} images). The model outputs the probability p that "
             "two images show the same class; pairs are scored by the distance 1 − p.", "",
             "## Verification on sampled test pairs", "",
             f"Threshold: {m['verification']['calibration']['note']}.", "",
             "| metric | " + " | ".join(name for name, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {k} | " + " | ".join(f"{part[k]:.4f}" for _, part in columns) + " |"
              for k in VERIFICATION_ROWS if k in m["verification"]]
    order = m["pair_order"]
    lines += ["", f"|p(a, b) − p(b, a)| on the test pairs: mean {order['mean_abs_difference']:.4f}, "
              f"max {order['max_abs_difference']:.4f}.", "", "## Training", "",
              f"{t['epochs']} epochs × {t['steps_per_epoch']} steps, batch {t['batch_size']} pairs; "
              f"{t['seconds']} s of training, {t['examples_per_second']} pairs/s; "
              f"{model['trained_parameters']} of {model['parameters']} parameters trained.", ""]
    lines += _files_section(report)
    lines += [f"## {title}\n\n![{title}]({name})\n" for title, name in figures.items()]
    return "\n".join(lines) + "\n"


def write_verifier_report(report: dict, out: Path, evaluation: dict) -> None:
    """Writes a verifier run's report.json, report.md and figures (1 − p histograms, ROC, training curves)."""
    figures = {}
    _add_pair_figures(figures, out, evaluation["pairs"]["verification"], report["metrics"]["verification"],
                      "Positive and negative pairs: 1 − match probability")
    _add_history(figures, report, out)
    report["figures"] = figures
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(_verifier_markdown(report, figures))
