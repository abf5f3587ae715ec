"""The `reprlearn` command line: parse arguments, call the library, report errors plainly."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import traceback
from pathlib import Path

import numpy as np

from reprlearn.errors import ConfigError, ReprlearnError
from reprlearn.index.gallery import BACKENDS, DEFAULT_COLLECTION
from reprlearn.index.milvus import INDEXES


def _train(args) -> int:
    from reprlearn.config import load_config

    cfg = load_config(args.config, args.set)  # a bad config fails here, before any worker starts
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    if args.engine == "ray":
        return _train_on_ray(args, out)
    if args.address or args.restarts is not None:
        raise ConfigError(f"--address and --restarts are for --engine ray. Received: --engine {args.engine}")
    if args.workers is not None:
        return _train_workers(args, out)
    from reprlearn.training import run_training

    command = "reprlearn " + " ".join(shlex.quote(a) for a in args.argv)
    report = run_training(cfg, out, command=command, verbose=0 if args.quiet else 1, resume=args.resume,
                          force=args.force)
    if not report:
        return 0  # a non-chief worker: the chief reports
    metrics = report["metrics"]
    if report["model"].get("kind") == "two_tower":
        scores = {name: metrics[name]["query_to_reference"] for name in
                  ("test", "shared_tower", "baseline_raw", "baseline_raw_cosine") if name in metrics}
        test = scores["test"]
        raw = max(scores["baseline_raw"]["recall_at_1"], scores["baseline_raw_cosine"]["recall_at_1"])
        shared = f"{scores['shared_tower']['recall_at_1']:.4f}" if "shared_tower" in scores else "not trained"
        print(f"\nTest queries → references: Recall@1 {test['recall_at_1']:.4f}, @5 {test['recall_at_5']:.4f}, "
              f"@10 {test['recall_at_10']:.4f}, @1% {test['recall_at_1pct']:.4f} (Recall@1: one shared tower "
              f"{shared}, raw pixels {raw:.4f})")
        print(f"Report: {out / 'report.md'}")
        return 0
    if report["model"].get("kind") == "verifier":
        verification = metrics["verification"]
        print(f"\nTest pairs: ROC AUC {verification['roc_auc']:.4f}, EER {verification['eer']:.4f}, TAR@FAR=1e-3 "
              f"{verification['tar_at_far_1e-3']:.4f}"
              + (f", accuracy {verification['accuracy']:.4f} at the threshold fit on validation pairs"
                 if "accuracy" in verification else ""))
        print(f"Report: {out / 'report.md'}")
        return 0
    test, raw = metrics["test"], metrics["baseline_raw"]
    if "verification" in metrics:
        verification = metrics["verification"]
        pca = metrics.get("baseline_pca")
        print(f"\nTest MAP@R {test['map_at_r']:.4f} (raw pixels: L2 {raw['map_at_r']:.4f}, cosine "
              f"{metrics['baseline_raw_cosine']['map_at_r']:.4f}"
              + (f"; PCA-{pca['dim']} {pca['map_at_r']:.4f}" if pca else "")
              + (f"; the tower's head {metrics['head']['map_at_r']:.4f}" if "head" in metrics else "")
              + f"), P@1 {test['precision_at_1']:.4f}, "
              f"ROC AUC {verification['roc_auc']:.4f}"
              + (f", accuracy {verification['accuracy']:.4f} at the threshold fit on validation pairs"
                 if "accuracy" in verification else ""))
    else:
        print(f"\nTest reconstruction MSE {metrics['reconstruction']['mse']:.5f} "
              f"(PCA {metrics['reconstruction']['pca_mse']:.5f}); codes MAP@R {test['map_at_r']:.4f} "
              f"(PCA {metrics['pca']['map_at_r']:.4f}, raw pixels {raw['map_at_r']:.4f})")
    print(f"Report: {out / 'report.md'}")
    return 0


def _train_workers(args, out: Path) -> int:
    from reprlearn.runs import remove_run
    from reprlearn.training.launch import launch_local_workers

    if args.force:  # here, before any worker could read the old run
        remove_run(out)
    train_args = [args.config, "--out", str(out), *[f"--set={item}" for item in args.set],
                  *(["--resume"] if args.resume else []), *(["--quiet"] if args.quiet else [])]
    return launch_local_workers(train_args, args.workers, out)


def _train_on_ray(args, out: Path) -> int:
    from reprlearn.cluster.train import train_workers
    from reprlearn.runs import remove_run

    if args.workers is None:
        raise ConfigError("--engine ray trains with --workers N (N >= 2) placed by Ray. Received: no --workers")
    if args.force:
        remove_run(out)
    # Paths as every node sees them: absolute, so the workers' own working folders do not matter.
    train_args = [str(Path(args.config).resolve()), "--out", str(out.resolve()),
                  *[f"--set={item}" for item in args.set],
                  *(["--resume"] if args.resume else []), *(["--quiet"] if args.quiet else [])]
    return train_workers(train_args, args.workers, out, args.address, 2 if args.restarts is None else args.restarts)


def _tune(args) -> int:
    from reprlearn.config import load_config, save_config
    from reprlearn.data import splits_for
    from reprlearn.training import run_training
    from reprlearn.data.pairs import pair_splits_for
    from reprlearn.training.tuning import (
        check_search,
        check_search_space,
        check_two_tower_search,
        describe,
        make_tuner,
        write_results,
    )

    cfg = load_config(args.config, args.set)
    out = Path(args.out)
    check_search_space(cfg)
    two_tower = cfg.model.kind == "two_tower"
    splits = pair_splits_for(cfg.data) if two_tower else splits_for(cfg.data)
    (check_two_tower_search if two_tower else check_search)(cfg, splits)  # before the search folder is made
    out.mkdir(parents=True, exist_ok=True)
    command = "reprlearn " + " ".join(shlex.quote(a) for a in args.argv)
    save_config(cfg, out / "config.yaml", command)
    tuner = make_tuner(cfg, splits, args.tuner, args.max_trials, out, verbose=0 if args.quiet else 1)
    tuner.search()
    if os.environ.get("KERASTUNER_TUNER_ID", "chief") != "chief":
        return 0  # a worker: the chief holds the oracle and writes the results
    best_cfg, rows = write_results(tuner, cfg, out)
    finished = [r for r in rows if r["objective"] is not None]
    print(f"\n{len(finished)} trials finished; results: {out / 'trials.csv'}")
    if best_cfg is None:
        return 1
    best = max(finished, key=lambda r: r["objective"])
    print(f"Best trial {best['trial']}: {cfg.search.objective} {best['objective']:.4f} with "
          f"{describe({k: v for k, v in best.items() if v is not None}) or 'the config as given'}")
    print(f"Best config: {out / 'best.yaml'}")
    if args.retrain_best:
        best_run = out / "best_run"
        # A resumed search may have found a new best: best_run/ then holds the old one, and is replaced.
        stale = (best_run / "config.yaml").is_file() and load_config(best_run / "config.yaml") != best_cfg
        if stale:
            print(f"{best_run} holds an earlier best trial; retraining the new one there")
        report = run_training(best_cfg, best_run, command=f"reprlearn train {out / 'best.yaml'}",
                              verbose=0 if args.quiet else 1, force=stale)
        test = report["metrics"]["test"]
        score = (f"Recall@1 {test['query_to_reference']['recall_at_1']:.4f}" if two_tower
                 else f"MAP@R {test['map_at_r']:.4f}")
        print(f"Retrained best: test {score}; report {out / 'best_run' / 'report.md'}")
    return 0


def _export(args) -> int:
    from reprlearn.export import export_run

    print(f"Exporting {args.run_dir} → {args.out}")
    result = export_run(args.run_dir, args.out, args.format, args.quantize, args.name, args.version, args.force,
                        gallery=args.gallery, identify_k=args.k, new_version=args.new_version)
    if result.get("unchanged"):
        return 0  # export_run said which version already holds it
    if result["saved_model"]:
        print(f"SavedModel: {result['saved_model']} (signatures: {', '.join(result['signatures'])})")
    print(f"TFLite/ONNX and parity report: {result['artifacts']}")
    return 0


def _embed(args) -> int:
    from reprlearn.runs import load_run

    _check_engine_options(args)
    out = Path(args.out)
    ray = args.engine == "ray"
    if ray and out.suffix in (".npz", ".parquet"):
        raise ConfigError(f"--engine ray writes a folder of Parquet shards: name a folder. Received: "
                          f"--out={args.out!r}")
    if not ray and out.suffix not in (".npz", ".parquet"):
        raise ConfigError(f"--out must name a .npz or .parquet file (or a folder, with --engine ray). Received: "
                          f"--out={args.out!r}")
    run = load_run(args.run_dir)
    data = _load_for_engine(args, run.decoding_for(args.view))
    tower = f", the {args.view} tower" if run.kind == "two_tower" else ""
    if ray:
        from reprlearn.cluster.embed import embed_files

        summary = embed_files(run.path, data, out, args.view, args.address, args.actors, _batch(args))
        dim, failed = summary["dim"], summary["failed"]
        done = f" ({summary['resumed']} of {summary['shards']} shards were already done)" if summary["resumed"] else ""
        print(f"{summary['written']} embeddings of dimension {dim} ({run.metric} metric{tower}) → {out}/ "
              f"({summary['shards']} Parquet shards{done})")
    else:
        from reprlearn.runs.files import write_embeddings

        dim, failed = write_embeddings(out, data, run, args.view)
        print(f"{len(data) - len(failed)} embeddings of dimension {dim} ({run.metric} metric{tower}) → {out}")
    _warn_undecoded(failed)
    return 0


def _load_for_engine(args, decoding):
    """`--data` as `decoding` says; with --engine ray, its file index checked by tasks on the cluster."""
    from reprlearn.data import load_spec

    if args.engine != "ray":
        return load_spec(args.data, args.data_dir, decoding)
    from reprlearn.cluster.engine import connect
    from reprlearn.cluster.files import ray_map
    from reprlearn.data.files import parallel_files

    connect(args.address)
    with parallel_files(ray_map):
        return load_spec(args.data, args.data_dir, decoding)


def _batch(args) -> int:
    from reprlearn.runs.inference import SET_BATCH

    return SET_BATCH if args.batch is None else args.batch


def _check_engine_options(args) -> None:
    if args.engine != "ray" and (args.address or args.actors is not None or args.batch is not None):
        raise ConfigError(f"--address, --actors and --batch are for --engine ray. Received: --engine {args.engine}")
    from reprlearn.cluster.engine import check_count

    check_count("--actors", args.actors)
    check_count("--batch", args.batch)


def _warn_undecoded(failed: list[str]) -> None:
    if failed:
        from reprlearn.data.files import NAMED_PROBLEMS

        more = f" and {len(failed) - NAMED_PROBLEMS} more" if len(failed) > NAMED_PROBLEMS else ""
        print(f"reprlearn: warning: {len(failed)} files did not decode and were left out: "
              f"{', '.join(failed[:NAMED_PROBLEMS])}{more}", file=sys.stderr)


def _index(args) -> int:
    from reprlearn.index import Gallery
    from reprlearn.runs import load_run

    out = Path(args.out)
    _check_engine_options(args)
    if args.engine == "ray" and (args.add or args.remove is not None):
        raise ConfigError(f"--engine ray enrols a new Milvus gallery; --add and --remove change one in this process. "
                          f"Received: --engine ray with {'--add' if args.add else '--remove'}")
    if args.remove is not None:
        if args.add or args.data:
            raise ConfigError(f"--remove takes ids only (no --data, no --add). Received: --remove with "
                              f"{'--add' if args.add else '--data ' + args.data}")
        gallery = Gallery.load(out, model_fingerprint=load_run(args.run_dir).model_fingerprint)
        gallery.remove(args.remove)
        gallery.save(out)
        print(f"Removed {len(args.remove)} items from {out}; {len(gallery)} remain")
        return 0
    if not args.data:
        raise ConfigError("index needs --data (the images to enrol), or --remove ID... Received: neither")
    run = load_run(args.run_dir)
    data = _load_for_engine(args, run.decoding_for("reference"))  # a two-tower run enrols references
    if args.add:
        gallery = Gallery.load(out, model_fingerprint=run.model_fingerprint)
        before = len(gallery)
        class_names = list(gallery.class_names or [])
        class_names += [name for name in data.class_names if name not in class_names]
        labels = np.asarray([class_names.index(name) for name in data.class_names])[data.labels]
        gallery.class_names = class_names
        failed = run.enrol(gallery, data, labels, data.names)
        gallery.save(out)
        _warn_undecoded(failed)
        print(f"Added {len(gallery) - before} items to {out}: {len(gallery)} items of {len(class_names)} classes")
        return 0
    if args.engine == "ray":
        from reprlearn.cluster.embed import index_files

        if args.backend != "milvus":
            raise ConfigError(f"--engine ray enrols into a Milvus server (--backend milvus --uri http://HOST:PORT): "
                              f"the other backends live in one process. Received: --backend {args.backend}")
        gallery, failed = index_files(run, data, out, args.uri or str(out / "gallery.db"), args.collection,
                                      args.index_type, args.far, args.address, args.actors, _batch(args))
        print(f"Enrolled {len(gallery)} items of {len(data.class_names)} classes on Ray → {args.out}; rejection "
              f"threshold {gallery.threshold:.4f} ({run.metric}) for FAR {args.far:g}, fit on {run.path}'s "
              "validation split")
        _warn_undecoded(failed)
        return 0
    options = {}
    if args.backend == "milvus":
        options = {"uri": args.uri or str(out / "gallery.db"), "collection": args.collection,
                   "index": args.index_type}
    elif args.uri or args.index_type != "FLAT":
        raise ConfigError(f"--uri and --index-type are for --backend milvus. Received: --backend {args.backend}")
    gallery = run.gallery([], [], backend=args.backend, class_names=data.class_names, **options)  # checks it is new
    failed = run.enrol(gallery, data, data.labels, data.names)
    gallery.threshold = run.rejection_threshold(args.far)
    gallery.save(out)
    print(f"Enrolled {len(gallery)} items of {len(set(data.labels.tolist()))} classes → {args.out}; "
          f"rejection threshold {gallery.threshold:.4f} ({run.metric}) for FAR {args.far:g}, fit on {run.path}'s "
          "validation split")
    _warn_undecoded(failed)
    return 0


def _identify(args) -> int:
    from reprlearn.data import load_spec
    from reprlearn.index import Gallery
    from reprlearn.runs import load_run
    from reprlearn.runs.files import write_identifications

    run = load_run(args.run_dir)
    gallery = Gallery.load(args.gallery, model_fingerprint=run.model_fingerprint)
    threshold = run.rejection_threshold(args.far) if args.far is not None else gallery.threshold
    data = load_spec(args.data, args.data_dir, run.decoding)
    result = gallery.identify(run.embed(data), threshold, k=min(args.k, len(gallery)))
    out = Path(args.out)
    write_identifications(out, result, gallery, data)
    print(f"{int(result.accepted.sum())} of {len(data)} queries identified, {int((~result.accepted).sum())} unknown "
          f"(threshold {threshold:.4f}) → {out}")
    return 0


def _verify(args) -> int:
    from reprlearn.runs import load_run

    run = load_run(args.run_dir)
    result = run.verify(run.read_image(args.image_a), run.read_image(args.image_b, view="reference"))
    decision = ("no threshold (the run calibrated none)" if result["match"] is None
                else "match" if result["match"] else "no match")
    threshold = "none" if result["threshold"] is None else f"{result['threshold']:.4f}"
    score = (f"match probability {result['match_probability']:.4f}, distance 1 - p {result['distance']:.4f}"
             if "match_probability" in result else f"distance {result['distance']:.4f} ({run.metric})")
    print(f"{score}, threshold {threshold}: {decision}")
    return 0


def _evaluate(args) -> int:
    from reprlearn.data import load_spec
    from reprlearn.evaluation.scoring import evaluate_against_gallery, evaluate_run, rate_text
    from reprlearn.index import Gallery
    from reprlearn.runs import load_run

    run = load_run(args.run_dir)
    if run.kind == "two_tower" and not args.gallery:
        return _evaluate_pairs(run, args)
    data = load_spec(args.data, args.data_dir, run.decoding)
    if args.gallery:
        gallery = Gallery.load(args.gallery, model_fingerprint=run.model_fingerprint)
        report, folder = evaluate_against_gallery(run, data, args.data, gallery, args.gallery, args.k)
        print(f"DIR {rate_text(report['dir'])}, recall@{report['k']} {rate_text(report['recall_at_k'])} on "
              f"{report['genuine']} queries of enrolled classes; FAR {rate_text(report['far'])} on "
              f"{report['impostors']} others (threshold "
              f"{report['threshold']:.4f}, {report['gallery_items']} items, {report['backend']})")
        print(f"Report: {folder / 'identification.md'}")
        return 0
    report, folder = evaluate_run(run, data, args.data)
    test, raw, cosine = (report["metrics"][k] for k in ("test", "baseline_raw", "baseline_raw_cosine"))
    print(f"MAP@R {test['map_at_r']:.4f} (raw pixels: L2 {raw['map_at_r']:.4f}, cosine {cosine['map_at_r']:.4f}), "
          f"P@1 {test['precision_at_1']:.4f} on {report['n']} images of {report['classes']} classes")
    print(f"Report: {folder / 'report.md'}")
    return 0


def _evaluate_pairs(run, args) -> int:
    from reprlearn.data.pairs import load_pairs
    from reprlearn.evaluation.cross_view import evaluate_pairs

    parts = load_pairs(args.data, run.decoding_for("query"), run.decoding_for("reference"))[0]
    report, folder = evaluate_pairs(run, parts, args.data)
    test, raw = report["metrics"]["test"]["query_to_reference"], report["metrics"]["baseline_raw"]
    print(f"Recall@1 {test['recall_at_1']:.4f}, @5 {test['recall_at_5']:.4f}, @1% {test['recall_at_1pct']:.4f} "
          f"(raw pixels, L2: {raw['query_to_reference']['recall_at_1']:.4f}) on {report['n']} pairs, "
          f"{test['references']} references")
    print(f"Report: {folder / 'report.md'}")
    return 0


def _transfer(args) -> int:
    from reprlearn.evaluation.transfer import transfer_study, write_transfer_report
    from reprlearn.runs import load_run

    run = load_run(args.run_dir)
    report = transfer_study(run, args.shots, args.draws, args.steps, args.far, seed=args.seed)
    folder = write_transfer_report(report, run.path / "transfer")
    print((folder / "report.md").read_text())
    print(f"Report: {folder / 'report.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reprlearn", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of every error, including problems with the input")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train, evaluate and report one run from a YAML config")
    train.add_argument("config", help="YAML config file (see configs/)")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value (repeatable), e.g. --set train.epochs=2")
    train.add_argument("--out", help="run folder (default runs/<config name>); re-running the same config "
                                     "continues it, a different config is refused")
    train.add_argument("--resume", action="store_true", help="continue the run in --out (an error if there is none)")
    train.add_argument("--force", action="store_true", help="delete the run in --out and start over")
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.add_argument("--workers", type=int, metavar="N",
                       help="train with N processes under MultiWorkerMirroredStrategy (on this machine, or placed "
                            "by Ray with --engine ray)")
    train.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: the workers run on this machine (default); ray: Ray places them on its nodes")
    train.add_argument("--address", help="--engine ray: the cluster's head (host:port; default RAY_ADDRESS, else a "
                                         "local cluster)")
    train.add_argument("--restarts", type=int, help="--engine ray: how often a job that lost a worker starts again "
                                                    "from its checkpoint (default 2)")
    train.set_defaults(handler=_train)
    tune = commands.add_parser("tune", help="search hyperparameters on a retrieval objective (keras-tuner)")
    tune.add_argument("config", help="YAML config; its search: section is the search space")
    tune.add_argument("--tuner", choices=["random", "bayesian", "hyperband"], default="bayesian")
    tune.add_argument("--max-trials", type=int, default=12,
                      help="trials to run (hyperband sizes its brackets from train.epochs instead)")
    tune.add_argument("--out", required=True, help="search folder; re-running the same command resumes")
    tune.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    tune.add_argument("--retrain-best", action="store_true", help="train best.yaml and write its run report")
    tune.add_argument("--quiet", action="store_true", help="no Keras progress bars")
    tune.set_defaults(handler=_tune)
    export = commands.add_parser("export", help="export a run's model to SavedModel, TFLite and ONNX, checked "
                                                "against Keras")
    export.add_argument("run_dir", help="a finished run folder (holds model.keras)")
    export.add_argument("--out", required=True, help="model base folder; the SavedModel goes to OUT/NAME/VERSION")
    export.add_argument("--format", default="saved_model,tflite,onnx", help="comma-separated formats")
    export.add_argument("--quantize", default="none,dynamic,float16,int8", help="comma-separated TFLite variants")
    export.add_argument("--name", help="model name (default: the run folder's name)")
    export.add_argument("--version", type=int, help="version number (default: the next free one)")
    export.add_argument("--force", action="store_true", help="replace an existing version")
    export.add_argument("--new-version", action="store_true",
                        help="write a new version even if the latest is this run's model exported the same way")
    export.add_argument("--gallery",
                        help="a gallery this run enrolled (`reprlearn index`): adds the identify signature")
    export.add_argument("--k", type=int, default=5, help="matches the identify signature returns per image")
    export.set_defaults(handler=_export)

    def add_data(command, what: str, required: bool = True):
        command.add_argument("--data", required=required, metavar="SPEC",
                             help=f"{what}: NAME[:SPLIT] (fashion_mnist:test, digits), tfds:NAME[:SPLIT] or "
                                  "folder:PATH")
        command.add_argument("--data-dir", help="where fashion_mnist or tfds data lives (default: the usual places)")

    def add_engine(command, what: str):
        command.add_argument("--engine", choices=("local", "ray"), default="local",
                             help=f"local: this process (default); ray: an actor pool on a Ray cluster ({what})")
        command.add_argument("--address", help="--engine ray: the cluster's head (host:port; default RAY_ADDRESS, "
                                               "else a local cluster on this machine)")
        command.add_argument("--actors", type=int, help="--engine ray: actors in the pool (default: one per GPU, "
                                                        "else one per node)")
        command.add_argument("--batch", type=int, help="--engine ray: images per model call (default 128)")

    embed = commands.add_parser("embed", help="embed a dataset with a trained run; write embeddings, labels, names")
    embed.add_argument("run_dir", help="a finished run folder")
    add_data(embed, "the images to embed")
    embed.add_argument("--out", required=True, help="a .npz file (embeddings, labels, names, class_names) or a "
                       ".parquet file (one row per image: name, label, class_name, embedding)")
    embed.add_argument("--view", choices=("query", "reference"), default="query",
                       help="a two-tower run: embed with the query tower (default) or the reference tower")
    add_engine(embed, "a folder of Parquet shards, written by the actors; run again, it embeds what is missing")
    embed.set_defaults(handler=_embed)
    index = commands.add_parser("index", help="enrol a dataset into a gallery with a trained run")
    index.add_argument("run_dir", help="a finished run folder")
    add_data(index, "the images to enrol (a two-tower run: reference images, through its reference tower)",
             required=False)
    index.add_argument("--out", required=True, help="gallery folder (gallery.npz + gallery.json; for milvus "
                                                    "gallery.json names the collection)")
    index.add_argument("--backend", default="exact", choices=BACKENDS,
                       help="exact (default), faiss-flat, faiss-hnsw, or milvus (the items in a Milvus collection)")
    index.add_argument("--uri", help="milvus: a Milvus Lite file ending in .db (default OUT/gallery.db) or a server "
                                     "such as http://host:19530")
    index.add_argument("--collection", default=DEFAULT_COLLECTION, help="milvus: the collection (default "
                                                                        f"{DEFAULT_COLLECTION})")
    index.add_argument("--index-type", default="FLAT", choices=list(INDEXES),
                       help="milvus: the collection's vector index (FLAT: exact)")
    index.add_argument("--add", action="store_true", help="add --data's items to the gallery at OUT (any backend; "
                                                          "ids are the items' names, which must be new)")
    index.add_argument("--remove", nargs="+", metavar="ID", help="remove these item ids from the gallery at OUT")
    add_engine(index, "the actors insert into the Milvus collection (--backend milvus, --uri of a server)")
    index.add_argument("--far", type=float, default=1e-3,
                       help="false-accept rate of the stored rejection threshold (fit on the run's validation split)")
    index.set_defaults(handler=_index)
    identify = commands.add_parser("identify", help="identify images against a gallery, with 'unknown'")
    identify.add_argument("run_dir", help="the run that enrolled the gallery")
    identify.add_argument("--gallery", required=True, help="a gallery folder written by `reprlearn index`")
    add_data(identify, "the query images")
    identify.add_argument("--k", type=int, default=5, help="matches listed per query")
    identify.add_argument("--far", type=float, help="refit the rejection threshold for this false-accept rate "
                                                    "(default: the gallery's)")
    identify.add_argument("--out", required=True, help="results .csv: decision and top-k matches per query")
    identify.set_defaults(handler=_identify)
    verify = commands.add_parser("verify", help="are two images of the same class? (1:1 verification)")
    verify.add_argument("run_dir", help="a finished run folder")
    verify.add_argument("image_a")
    verify.add_argument("image_b")
    verify.set_defaults(handler=_verify)
    evaluate = commands.add_parser("evaluate", help="re-score a trained run on other data (retrieval, verification)")
    evaluate.add_argument("run_dir", help="a finished run folder; the report goes to RUN/evaluations/<data>/")
    add_data(evaluate, "the labelled images to score (a two-tower run: matched pairs, csv:FILE or folder:DIR; the "
                       "test rows where the CSV has a split column)")
    evaluate.add_argument("--gallery", help="identify the images against this gallery (any backend) instead: DIR, "
                                            "rank-1, recall@k, FRR, FAR at its threshold")
    evaluate.add_argument("--k", type=int, default=5, help="with --gallery: the k of recall@k")
    evaluate.set_defaults(handler=_evaluate)
    transfer = commands.add_parser("transfer", help="n-shot transfer to the run's unseen test classes: k-NN, a new "
                                                    "head, fine-tuning, beside raw pixels")
    transfer.add_argument("run_dir", help="a run trained with data.protocol=unseen-classes")
    transfer.add_argument("--shots", type=int, nargs="+", default=[1, 5, 20], help="examples per class (n)")
    transfer.add_argument("--draws", type=int, default=5, help="seeded draws of the n-shot set per n")
    transfer.add_argument("--steps", type=int, default=100, help="full-batch steps for the head and fine-tuning")
    transfer.add_argument("--far", type=float, default=0.01, help="false-accept rate of the open-set threshold")
    transfer.add_argument("--seed", type=int, default=0)
    transfer.set_defaults(handler=_transfer)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one command. Exit 0: done; 2: a problem in the input (one line); 1: an internal error (a traceback);
    130: interrupted."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.handler(args)
    except ReprlearnError as err:
        if args.debug:
            traceback.print_exc()
        print(f"reprlearn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a path that cannot be read or written: say which
        if args.debug:
            traceback.print_exc()
        print(f"reprlearn {args.command}: error: {err.strerror or err}: {err.filename or ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = {"train": "finished epochs are checkpointed", "tune": "finished trials are kept",
                "embed": "with --engine ray, finished shards are kept", "index": "with --engine ray, finished "
                "shards are recorded"}.get(args.command)
        print(f"\nreprlearn {args.command}: interrupted" + (f"; {kept}, so the same command continues from there"
                                                            if kept else ""), file=sys.stderr)
        return 130
    except Exception as err:  # a bug in reprlearn (or a library under it), not in the input: keep the traceback
        traceback.print_exc()
        print(f"reprlearn {args.command}: internal error ({type(err).__name__}: {err}). This is a bug, not a problem "
              "with your input; the traceback above says where. Please report it with the command.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
