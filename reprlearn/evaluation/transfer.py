"""Transfer to new classes from n labelled examples each: the n-shot protocol on a run's unseen test classes.

For n in `shots` and each of `draws` seeded draws, n examples per target class form the gallery /
training set and every other target example is a query. Approaches, all scored on the same draws:

    raw pixels k-NN (L2, cosine)   the baseline: 1-NN on pixels / 255
    frozen k-NN                    1-NN on the run's embeddings (no training)
    frozen + head                  approach 1: the tower frozen, a new softmax layer trained on the n-shot set
    fine-tuned                     approach 2: tower and softmax layer trained together, the tower at a
                                   tenth of the head's learning rate

Open set: a share of the target classes is left out of the gallery (and of the heads' training set)
and must come back unknown. The k-NN approaches reject by distance: the threshold for the
embeddings is `Run.rejection_threshold`, fit on the run's validation split (never on the target
classes); for raw pixels the same recipe runs on the validation images' pixels. The two trained
approaches reject by their top softmax probability: the run's validation images (training classes,
none of them a target class) are the impostors its threshold is fit on. DIR is the share of queries
of enrolled classes accepted with the right label; the false-accept rate reached on the left-out
classes is reported beside it.

Example:
    report = transfer_study(load_run("runs/fashion_unseen"), shots=(1, 5, 20), draws=5)
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from reprlearn.data import flat_pixels, stratified_split
from reprlearn.errors import ConfigError
from reprlearn.index import Gallery, impostor_threshold, split_class_threshold
from reprlearn.models.optimizers import LayerRateAdam
from reprlearn.runs import Run

APPROACHES = ("raw pixels k-NN (L2)", "raw pixels k-NN (cosine)", "frozen k-NN", "frozen + head", "fine-tuned")
HEAD_LEARNING_RATE = 1e-2
TOWER_LEARNING_RATE_FACTOR = 0.1


def n_shot_draw(labels: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`(support, queries)` indices: n examples of every class (all of a class with fewer than n + 1 go to
    support but one), the rest queries."""
    support = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        support += members[:min(n, len(members) - 1)].tolist()
    support = np.sort(np.asarray(support, np.int64))
    return support, np.setdiff1d(np.arange(len(labels)), support)


def _one_nn_accuracy(support_x, support_y, query_x, query_y, metric: str) -> float:
    gallery = Gallery(metric)
    gallery.add(support_x, support_y)
    return float(np.mean(gallery.classify(query_x, k=1) == query_y))


def _train_head(model: keras.Model, inputs: np.ndarray, labels: np.ndarray, steps: int, seed: int,
                tower: keras.Model | None = None) -> keras.Model:
    """Trains `model` (ending in softmax over the target classes) on the n-shot set, full batch, `steps` steps.

    With `tower`, the tower's variables move at a tenth of the head's learning rate (fine-tuning).
    """
    keras.utils.set_random_seed(seed)
    tower_layers = [] if tower is None else [layer.name for layer in tower.layers if layer.weights]
    optimizer = LayerRateAdam(HEAD_LEARNING_RATE,
                              layer_factors={name: TOWER_LEARNING_RATE_FACTOR for name in tower_layers})
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    x, y = tf.constant(inputs, tf.float32), tf.constant(labels)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

    for _ in range(steps):
        step()
    return model


def _open_set(support_x, support_y, query_x, query_y, metric: str, threshold: float, held_out: np.ndarray) -> dict:
    """DIR and the false-accept rate reached, with the classes `held_out` left out of the gallery."""
    enrolled = ~np.isin(support_y, held_out)
    gallery = Gallery(metric)
    gallery.add(support_x[enrolled], support_y[enrolled])
    result = gallery.identify(query_x, threshold)
    genuine = ~np.isin(query_y, held_out)
    return {"dir": float(np.mean(result.accepted[genuine] & (result.labels[genuine] == query_y[genuine]))),
            "far": float(np.mean(result.accepted[~genuine]))}


def _softmax_open_set(model: keras.Model, query_inputs, query_y, enrolled_classes: np.ndarray, impostor_inputs,
                      far: float) -> dict:
    """DIR and the false-accept rate reached of a softmax over `enrolled_classes` that accepts its top class when
    its probability clears a threshold set for `far` on `impostor_inputs` (no target class among them)."""
    impostor_top = np.max(model.predict(impostor_inputs, verbose=0), axis=1)
    threshold = impostor_threshold(1.0 - impostor_top, far)  # as a distance: 1 − top probability
    probabilities = model.predict(query_inputs, verbose=0)
    accepted = 1.0 - np.max(probabilities, axis=1) <= threshold
    predicted = enrolled_classes[np.argmax(probabilities, axis=1)]
    genuine = np.isin(query_y, enrolled_classes)
    return {"dir": float(np.mean(accepted[genuine] & (predicted[genuine] == query_y[genuine]))),
            "far": float(np.mean(accepted[~genuine]))}


def _softmax_head(inputs_shape, classes: int, tower: keras.Model | None = None) -> keras.Model:
    """A new softmax layer over `classes`, on embeddings (`inputs_shape`) or on top of `tower`."""
    layer = keras.layers.Dense(classes, activation="softmax")
    if tower is None:
        return keras.Sequential([keras.Input(inputs_shape), layer])
    return keras.Sequential([tower, layer])


def _fresh_tower(run: Run) -> keras.Model:
    """The run's embedding model read again from its file: a copy that fine-tuning may change."""
    return keras.saving.load_model(run.path / "model.keras", compile=False)


def _raw_threshold(val_images: np.ndarray, val_labels: np.ndarray, run: Run, metric: str, far: float) -> float:
    """The rejection threshold of raw pixels, by `Run.rejection_threshold`'s recipe on the validation pixels."""
    return split_class_threshold(flat_pixels(val_images), val_labels, metric, far, run.config.data.seed)


# A run on files: the study decodes at most this many test (and validation) files into memory, a class-stratified
# sample, since the fine-tuned heads train on pixels in memory.
TRANSFER_FILES = 5000


def _in_memory(part, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`(images, labels)` of a split: its array, or for files at most `TRANSFER_FILES` of them decoded (uint8)."""
    if part.decoded:
        return part.images, part.labels
    keep = np.arange(len(part))
    if len(part) > TRANSFER_FILES:
        keep = stratified_split(part.labels, TRANSFER_FILES / len(part), seed)[1]
    decoded = np.concatenate([np.clip(np.round(part.pixels(keep[i:i + 256])), 0, 255).astype(np.uint8)
                              for i in range(0, len(keep), 256)])
    return decoded, part.labels[keep]


def transfer_study(run: Run, shots=(1, 5, 20), draws: int = 5, steps: int = 100, far: float = 1e-2,
                   held_out_share: float = 0.3, seed: int = 0) -> dict:
    """Runs the n-shot protocol on the run's test split; returns mean ± std per approach and n (see module doc).

    Raises:
        ValueError: the run's test classes are classes it trained on (a seen-classes run), or a bad argument.
    """
    if run.kind == "two_tower":
        raise ConfigError("transfer teaches one tower new classes from a few of their images; a two-tower run "
                          "matches places across views: score it on new pairs with `reprlearn evaluate RUN --data "
                          f"csv:PAIRS`. Received: run={str(run.path)!r} (kind 'two_tower')")
    train_classes = set(run.record["data"]["train_classes"])
    images, labels = _in_memory(run.split("test"), run.config.data.seed)
    val_images, val_labels = _in_memory(run.split("val"), run.config.data.seed)
    target_classes = np.unique(labels)
    if train_classes & set(target_classes.tolist()):
        raise ConfigError("transfer needs target classes the run never trained on: its test split holds training "
                         f"classes {sorted(train_classes & set(target_classes.tolist()))}. Train with "
                         f"data.protocol=unseen-classes. Received: run={str(run.path)!r}")
    if draws < 1 or steps < 1 or not shots or min(shots) < 1 or not 0 < held_out_share < 1:
        raise ConfigError(f"shots, draws and steps must be >= 1 and held_out_share in (0, 1). Received: shots={shots}, "
                         f"draws={draws}, steps={steps}, held_out_share={held_out_share}")
    embeddings, pixels = run.embed(images), flat_pixels(images)
    index_of = {c: i for i, c in enumerate(target_classes)}
    dense_labels = np.array([index_of[c] for c in labels])
    thresholds = {"frozen k-NN": run.rejection_threshold(far),
                  "raw pixels k-NN (L2)": _raw_threshold(val_images, val_labels, run, "L2", far),
                  "raw pixels k-NN (cosine)": _raw_threshold(val_images, val_labels, run, "angular", far)}
    held_count = max(1, int(round(held_out_share * len(target_classes))))
    val_images = val_images.astype(np.float32)
    val_embeddings = run.embed(val_images)
    results: dict = {}
    for n in shots:
        per_draw: dict[str, list] = {name: [] for name in APPROACHES}
        open_set: dict[str, list] = {name: [] for name in (*thresholds, "frozen + head", "fine-tuned")}
        for draw in range(draws):
            rng = np.random.default_rng([seed, n, draw])
            support, queries = n_shot_draw(labels, n, rng)
            sy, qy = labels[support], labels[queries]
            per_draw["raw pixels k-NN (L2)"].append(_one_nn_accuracy(pixels[support], sy, pixels[queries], qy, "L2"))
            per_draw["raw pixels k-NN (cosine)"].append(
                _one_nn_accuracy(pixels[support], sy, pixels[queries], qy, "angular"))
            per_draw["frozen k-NN"].append(
                _one_nn_accuracy(embeddings[support], sy, embeddings[queries], qy, run.metric))
            head = _softmax_head(embeddings.shape[1:], len(target_classes))
            _train_head(head, embeddings[support], dense_labels[support], steps, draw)
            per_draw["frozen + head"].append(float(np.mean(
                np.argmax(head.predict(embeddings[queries], verbose=0), 1) == dense_labels[queries])))
            tower = _fresh_tower(run)
            tuned = _softmax_head(None, len(target_classes), tower)
            _train_head(tuned, images[support].astype(np.float32), dense_labels[support], steps, draw, tower)
            per_draw["fine-tuned"].append(float(np.mean(
                np.argmax(tuned.predict(images[queries].astype(np.float32), verbose=0), 1) == dense_labels[queries])))
            held_out = rng.choice(target_classes, held_count, replace=False)
            for name, threshold in thresholds.items():
                x = embeddings if name == "frozen k-NN" else pixels
                metric = run.metric if name == "frozen k-NN" else ("L2" if "L2" in name else "angular")
                open_set[name].append(_open_set(x[support], sy, x[queries], qy, metric, threshold, held_out))
            # The trained approaches again, on the enrolled classes' support only.
            enrolled = np.setdiff1d(target_classes, held_out)
            known = np.flatnonzero(np.isin(sy, enrolled))
            known_labels = np.searchsorted(enrolled, sy[known])
            head = _softmax_head(embeddings.shape[1:], len(enrolled))
            _train_head(head, embeddings[support][known], known_labels, steps, draw)
            open_set["frozen + head"].append(_softmax_open_set(head, embeddings[queries], qy, enrolled,
                                                               val_embeddings, far))
            tower = _fresh_tower(run)
            tuned = _softmax_head(None, len(enrolled), tower)
            _train_head(tuned, images[support][known].astype(np.float32), known_labels, steps, draw, tower)
            open_set["fine-tuned"].append(_softmax_open_set(tuned, images[queries].astype(np.float32), qy, enrolled,
                                                            val_images, far))
        results[str(n)] = {
            "top1": {name: {"mean": float(np.mean(v)), "std": float(np.std(v)), "draws": v}
                     for name, v in per_draw.items()},
            "open_set": {name: {"dir_mean": float(np.mean([r["dir"] for r in rows])),
                                "dir_std": float(np.std([r["dir"] for r in rows])),
                                "far_reached": float(np.mean([r["far"] for r in rows]))}
                         for name, rows in open_set.items()},
        }
    return {"run": str(run.path), "target_classes": target_classes.tolist(), "draws": draws, "steps": steps,
            "far": far, "held_out_classes_per_draw": held_count, "thresholds": thresholds, "shots": results}


def write_transfer_report(report: dict, folder: Path) -> Path:
    """`report.json` and `report.md` (top-1 and open-set tables) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    shots = list(report["shots"])
    lines = [f"# n-shot transfer of {Path(report['run']).name} to classes {report['target_classes']}", "",
             f"{report['draws']} draws per n; heads trained {report['steps']} full-batch steps. Top-1 accuracy "
             "(mean ± std over draws):", "", "| approach | " + " | ".join(f"n = {n}" for n in shots) + " |",
             "|---|" + "---|" * len(shots)]
    for name in APPROACHES:
        cells = [f"{report['shots'][n]['top1'][name]['mean']:.3f} ± {report['shots'][n]['top1'][name]['std']:.3f}"
                 for n in shots]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Open set: {report['held_out_classes_per_draw']} target classes left out of the gallery (and of the "
              f"heads' training set) per draw; thresholds for FAR {report['far']:g} fit on the run's validation split "
              "(k-NN: its distances; heads: their top softmax probability on its images). DIR (FAR reached on the "
              "left-out classes):", "", "| approach | " + " | ".join(f"n = {n}" for n in shots) + " |",
              "|---|" + "---|" * len(shots)]
    for name in report["shots"][shots[0]]["open_set"]:
        cells = [f"{report['shots'][n]['open_set'][name]['dir_mean']:.3f} "
                 f"({report['shots'][n]['open_set'][name]['far_reached']:.3f})" for n in shots]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    return folder
