"""Run folders: the record a run leaves (`record`), a finished run read back (`api`), models run on images
(`inference`; a two-tower run as `two_tower.TwoTowerRun`).

Example:
    run = load_run("runs/demo")
    embeddings = run.embed(images)
"""

from reprlearn.errors import RunFolderError
from reprlearn.runs.api import Run, load_run
from reprlearn.runs.inference import embed, inference_copy, match_probabilities, save_and_check_reload
from reprlearn.runs.two_tower import TwoTowerRun
from reprlearn.runs.record import (CHECKPOINTS, EVALUATION_FILE, EVALUATION_LIMIT_BYTES, HEAD_FILE, RECORD_FILE,
                                   REPRESENTATIVE_IMAGES, config_differences, data_record, fingerprint, open_run,
                                   read_checkpoint_state, remove_run, run_summary, wait_for_run, write_json_atomic)

__all__ = ["CHECKPOINTS", "EVALUATION_FILE", "EVALUATION_LIMIT_BYTES", "HEAD_FILE", "RECORD_FILE",
           "REPRESENTATIVE_IMAGES", "Run", "RunFolderError", "config_differences", "data_record", "embed",
           "fingerprint", "inference_copy", "load_run", "match_probabilities", "open_run", "read_checkpoint_state",
           "remove_run", "run_summary", "save_and_check_reload", "TwoTowerRun", "wait_for_run",
           "write_json_atomic"]
