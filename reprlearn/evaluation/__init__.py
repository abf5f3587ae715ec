"""Scoring a trained run and showing the result: metrics on each split beside fair baselines (`scoring`), the
report and its figures (`report`, `figures`), the TensorBoard projector (`projector`) and n-shot transfer
(`transfer`).

The modules are imported on use (`from reprlearn.evaluation.scoring import evaluate_run`), so importing
the package does not import matplotlib.
"""
