"""Scoring embeddings of a labelled set: retrieval beside raw pixels (L2 and cosine), and verification on pairs.

The training report scores its test split with `score_embeddings`; `evaluate_run` re-scores a
finished run on other data (`reprlearn evaluate RUN --data SPEC`), with the verification threshold
the run fit on its own validation pairs: the new data is only scored.

Example:
    report = evaluate_run(load_run("runs/demo"), load_spec("folder:/data/new_products"))
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from reprlearn.data import ImageSet, flat_pixels
from reprlearn.errors import GalleryError
from reprlearn.metrics import retrieval_metrics, sample_pairs, verification_metrics
from reprlearn.metrics.verification import best_threshold
from reprlearn.ops.distances import paired_distance
from reprlearn.runs import Run


def can_pair(labels: np.ndarray) -> bool:
    """Two classes and a class with two items: matching and non-matching pairs both exist."""
    counts = np.unique(labels, return_counts=True)[1]
    return len(counts) >= 2 and counts.max() >= 2


def pair_distances(embeddings: np.ndarray, labels: np.ndarray, n_pairs: int, metric: str, seed: int):
    """`(distances [P], match [P])` of `n_pairs` pairs sampled as `sample_pairs` does (half matching)."""
    first, second, match = sample_pairs(labels, n_pairs, seed=seed)
    return paired_distance(embeddings[first], embeddings[second], metric).numpy(), match


def validation_threshold(distances: np.ndarray | None, match: np.ndarray | None) -> tuple[float | None, dict]:
    """`(threshold, calibration record)`: the accuracy-maximising match threshold on validation pairs, or None with
    a record saying why when there are none (or they are all of one kind). Test pairs are only ever scored."""
    if distances is None or not match.any() or match.all():
        return None, {"split": "val", "pairs": 0,
                      "note": "the validation split has no pairs: no threshold was calibrated"}
    threshold, accuracy = best_threshold(distances, match)
    return threshold, {"split": "val", "pairs": int(match.size), "accuracy": accuracy,
                       "note": "threshold fit on validation pairs from the training side; test pairs are only scored"}


# Training images a PCA is fit on, for a baseline or a joint embedding's cap (a random sample beyond this).
PCA_FIT_IMAGES = 20000
# Streamed photos: the PCA fits on at most this many training files (shrunk as `flat_pixels` shrinks them), so the
# baseline's memory does not grow with the dataset.
PCA_FIT_FILES = 5000


def pca_fit_sample(train_images, seed: int):
    """The training images a PCA is fit on: all of them, or `PCA_FIT_IMAGES` (`PCA_FIT_FILES` for streamed photos)
    drawn with `seed` (an array, or an `ImageSet` whose subset is returned)."""
    limit = PCA_FIT_FILES if isinstance(train_images, ImageSet) and train_images.streamed else PCA_FIT_IMAGES
    if len(train_images) <= limit:
        return train_images
    chosen = np.sort(np.random.default_rng(seed).choice(len(train_images), limit, replace=False))
    return train_images.subset(chosen) if isinstance(train_images, ImageSet) else train_images[chosen]


def pca_baseline(train_images: np.ndarray, images: np.ndarray, labels: np.ndarray, dim: int, seed: int) -> dict:
    """Retrieval on raw pixels projected by a PCA to `dim` components fit on `train_images` only, under L2 and
    cosine: the better of the two, with `metric` and `dim` recorded."""
    from sklearn.decomposition import PCA

    fit = flat_pixels(pca_fit_sample(train_images, seed))
    dim = int(min(dim, *fit.shape))
    projected = PCA(dim, random_state=seed).fit(fit).transform(flat_pixels(images))
    # NMI clusters the vectors themselves, whatever the ranking metric: k-means runs once.
    scored = {"L2": retrieval_metrics(projected, labels, "L2", seed=seed),
              "cosine": retrieval_metrics(projected, labels, "angular", compute_nmi=False, seed=seed)}
    better = max(scored, key=lambda name: scored[name]["map_at_r"])
    return {**scored[better], "nmi": scored["L2"]["nmi"], "metric": better, "dim": dim,
            "fit_on": f"{len(fit)} training images"}


def score_embeddings(embeddings: np.ndarray, images: np.ndarray, labels: np.ndarray, metric: str,
                     threshold: float | None, n_pairs: int, seed: int,
                     pca_train_images: np.ndarray | None = None) -> tuple[dict, dict]:
    """`(metrics, pairs)`: retrieval of the embeddings and of raw pixels (L2, cosine; `baseline_raw_better` names
    the stronger), PCA of the pixels at the embedding's size fit on `pca_train_images` (when given), and
    verification.

    `threshold` must come from other data (validation pairs); it is only applied here.
    """
    raw = flat_pixels(images)
    metrics = {
        "test": retrieval_metrics(embeddings, labels, metric, seed=seed),
        "baseline_raw": retrieval_metrics(raw, labels, "L2", seed=seed),
        "baseline_raw_cosine": retrieval_metrics(raw, labels, "angular", compute_nmi=False, seed=seed),
    }
    metrics["baseline_raw_better"] = ("cosine" if metrics["baseline_raw_cosine"]["map_at_r"]
                                      > metrics["baseline_raw"]["map_at_r"] else "L2")
    if pca_train_images is not None:
        metrics["baseline_pca"] = pca_baseline(pca_train_images, images, labels, embeddings.shape[1], seed)
    pairs = {}
    if can_pair(labels):
        distances, match = pair_distances(embeddings, labels, n_pairs, metric, seed)
        metrics["verification"] = verification_metrics(distances, match, threshold)
        pairs = {"distances": distances, "match": match}
    return metrics, pairs


def evaluation_folder(run: Run, spec: str) -> Path:
    """`RUN/evaluations/<spec as a file name>/`, made if missing: where re-scoring a run on `spec` reports."""
    folder = run.path / "evaluations" / (re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("_") or "data")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def evaluate_run(run: Run, data: ImageSet, spec: str, n_pairs: int | None = None) -> tuple[dict, Path]:
    """Re-scores `run` on `data`; writes `RUN/evaluations/<spec>/report.json` and `report.md`, nothing else.

    Returns:
        `(report, folder)`.
    """
    threshold = run.verification_threshold
    metrics, _ = score_embeddings(run.embed(data), data, data.labels, run.metric, threshold,
                                  n_pairs or run.config.eval.verification_pairs, run.config.data.seed)
    report = {"run": str(run.path), "data": spec, "n": len(data), "classes": len(np.unique(data.labels)),
              "metric": run.metric, "model_fingerprint": run.model_fingerprint,
              "threshold_from": "the run's validation pairs" if threshold is not None else None, "metrics": metrics}
    folder = evaluation_folder(run, spec)
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    rows = [("embedding", metrics["test"]), ("raw pixels, L2", metrics["baseline_raw"]),
            ("raw pixels, cosine", metrics["baseline_raw_cosine"])]
    lines = [f"# {run.path.name} on {spec}", "", f"{len(data)} images, {report['classes']} classes, "
             f"{run.metric} distance.", "", "| | MAP@R | R-precision | P@1 |", "|---|---|---|---|"]
    lines += [f"| {name} | {m['map_at_r']:.4f} | {m['r_precision']:.4f} | {m['precision_at_1']:.4f} |"
              for name, m in rows]
    if "verification" in metrics:
        v = metrics["verification"]
        lines += ["", f"Verification on {v['num_pairs']} pairs: ROC AUC {v['roc_auc']:.4f}, EER {v['eer']:.4f}"
                  + (f"; at the run's threshold {v['threshold']:.4f} (fit on its validation pairs): accuracy "
                     f"{v['accuracy']:.4f}, FAR {v['far']:.4f}, FRR {v['frr']:.4f}" if "threshold" in v else "")]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    return report, folder


def identification_scores(gallery, embeddings: np.ndarray, labels: np.ndarray, k: int = 5) -> dict:
    """Open-set identification of labelled queries against a gallery at its own rejection threshold.

    `labels` are the queries' class ids in the gallery's numbering, negative for a class the gallery does
    not know. Queries of an enrolled class are genuine: the detection and identification rate (DIR) is the
    share accepted with the right label, rank-1 and recall@k the share whose nearest / k nearest items
    include their class, threshold aside, and FRR the share rejected. The others are impostors: FAR is the
    share accepted.
    """
    labels = np.asarray(labels)
    result = gallery.identify(embeddings, k=min(k, len(gallery)))
    genuine = (labels >= 0) & gallery.enrolled(np.maximum(labels, 0))
    correct = result.neighbour_labels == labels[:, None]
    rate = (lambda values: float(np.mean(values)) if len(values) else None)
    return {"queries": len(labels), "genuine": int(genuine.sum()), "impostors": int((~genuine).sum()),
            "threshold": gallery.threshold, "k": int(result.distances.shape[1]),
            "dir": rate(result.accepted[genuine] & correct[genuine, 0]),
            "rank_1": rate(correct[genuine, 0]), "recall_at_k": rate(correct[genuine].any(axis=1)),
            "frr": rate(~result.accepted[genuine]), "far": rate(result.accepted[~genuine])}


def rate_text(rate: float | None) -> str:
    """A rate of `identification_scores` as printed: four decimals, or "n/a" where no query counts."""
    return "n/a" if rate is None else f"{rate:.4f}"


def evaluate_against_gallery(run: Run, data: ImageSet, spec: str, gallery, gallery_path: str,
                             k: int = 5) -> tuple[dict, Path]:
    """Identifies `data` against a gallery this run enrolled; writes `RUN/evaluations/<spec>/identification.json`
    and `.md`. Classes are matched by name; a class the gallery lacks makes its queries impostors.

    Returns:
        `(report, folder)`.
    """
    if gallery.threshold is None:
        raise GalleryError(f"the gallery has no rejection threshold (`reprlearn index` sets one). "
                           f"Received: gallery={gallery_path!r}")
    names = list(gallery.class_names or [])
    as_gallery_label = np.asarray([names.index(name) if name in names else -1 for name in data.class_names])
    scores = identification_scores(gallery, run.embed(data), as_gallery_label[data.labels], k)
    report = {"run": str(run.path), "data": spec, "gallery": gallery_path, "backend": gallery.backend,
              "gallery_items": len(gallery), "metric": run.metric, **scores}
    folder = evaluation_folder(run, spec)
    (folder / "identification.json").write_text(json.dumps(report, indent=2))
    shown = {key: rate_text(scores[key]) for key in ("dir", "rank_1", "recall_at_k", "frr", "far")}
    lines = [f"# {run.path.name}: {spec} against the gallery {gallery_path}", "",
             f"{scores['queries']} queries: {scores['genuine']} of enrolled classes, {scores['impostors']} of others; "
             f"{len(gallery)} items ({gallery.backend}); threshold {scores['threshold']:.4f} ({run.metric}).", "",
             f"| DIR | rank-1 | recall@{scores['k']} | FRR | FAR |", "|---|---|---|---|---|",
             f"| {shown['dir']} | {shown['rank_1']} | {shown['recall_at_k']} | {shown['frr']} | {shown['far']} |"]
    (folder / "identification.md").write_text("\n".join(lines) + "\n")
    return report, folder
