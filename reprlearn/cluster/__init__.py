"""Past one machine: embed, enrol and train on a Ray cluster (a local one by default).

Nothing here is imported by `import reprlearn`; each module imports Ray when a job starts, and without the `ray`
extra stops with one line naming it (`pip install 'reprlearn[ray]'`).

- `engine`: connecting (`RAY_ADDRESS`, `--address`, or a local cluster started here), progress lines.
- `embed`: `embed_files` (Parquet shards written by an actor pool, resumable) and `index_files` (the actors insert
  into a Milvus collection).
- `train`: `train_workers`, the multi-worker run with Ray placing the workers.
- `files`: the file index's checks as Ray tasks.
"""
