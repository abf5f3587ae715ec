"""Errors split from bugs: a ReprlearnError is one line and exit 2, anything else a traceback and exit 1."""

import subprocess
import sys

import pytest

from reprlearn import cli
from reprlearn.config import ConfigError, load_config
from reprlearn.errors import (ConfigError as ErrorsConfigError, DataError, DatasetNotFoundError, ExportError,
                              GalleryError, ReprlearnError, RunFolderError)


@pytest.mark.parametrize("kind, builtin", [(ConfigError, ValueError), (DataError, ValueError),
                                           (DatasetNotFoundError, FileNotFoundError), (RunFolderError, ValueError),
                                           (ExportError, RuntimeError), (GalleryError, ValueError)])
def test_every_user_error_is_a_reprlearn_error_and_keeps_its_builtin_base(kind, builtin):
    assert issubclass(kind, ReprlearnError) and issubclass(kind, builtin)
    assert ConfigError is ErrorsConfigError  # one class, re-exported where users met it


def _failing_handler(error):
    def handler(args):
        raise error
    return handler


def _run_with(monkeypatch, capsys, error, *flags):
    """`reprlearn [flags] verify RUN A B` with the handler replaced by one that raises `error`."""
    parser = cli.build_parser()
    real_parse = parser.parse_args

    def parse(argv):
        args = real_parse(argv)
        args.handler = _failing_handler(error)
        return args

    monkeypatch.setattr(parser, "parse_args", parse)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    code = cli.main([*flags, "verify", "run", "a.png", "b.png"])
    return code, capsys.readouterr().err


def test_a_user_error_is_one_line_and_exit_2(monkeypatch, capsys):
    code, err = _run_with(monkeypatch, capsys, DataError("images must be [N, H, W]. Received: shape=(3,)"))
    assert code == 2
    assert err.strip().splitlines() == ["reprlearn verify: error: images must be [N, H, W]. Received: shape=(3,)"]


def test_a_bug_is_an_internal_error_with_its_traceback_and_exit_1(monkeypatch, capsys):
    code, err = _run_with(monkeypatch, capsys, KeyError("kind"))
    assert code == 1
    assert "Traceback (most recent call last)" in err and "KeyError: 'kind'" in err
    assert err.strip().splitlines()[-1].startswith("reprlearn verify: internal error (KeyError: 'kind')")


def test_a_plain_value_error_is_a_bug_not_bad_input(monkeypatch, capsys):
    """Before the split every ValueError was shown as bad input, hiding bugs; now only ReprlearnError is."""
    code, err = _run_with(monkeypatch, capsys, ValueError("operands could not be broadcast"))
    assert code == 1 and "Traceback" in err and "internal error" in err


def test_debug_shows_the_traceback_of_a_user_error_too(monkeypatch, capsys):
    code, err = _run_with(monkeypatch, capsys, ConfigError("config: train.epochs must be > 0"), "--debug")
    assert code == 2 and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1] == "reprlearn verify: error: config: train.epochs must be > 0"


def test_yaml_1_2_numbers_are_floats_in_files_and_overrides(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("train: {learning_rate: 3e-4}\nloss: {margin: 1E-1}\n")
    cfg = load_config(config, overrides=["model.dropout=5e-2"])
    assert (cfg.train.learning_rate, cfg.loss.margin, cfg.model.dropout) == (3e-4, 0.1, 0.05)
    assert load_config(config, overrides=["train.learning_rate=1e-4"]).train.learning_rate == 1e-4
    with pytest.raises(ConfigError, match=r"train.epochs must be a int. Received: train.epochs='1e2x' \(str\)"):
        load_config(config, overrides=["train.epochs=1e2x"])


def test_figures_leave_matplotlib_s_backend_and_pyplot_alone(tmp_path):
    """A notebook user's backend and figures stay as they were: reports draw outside pyplot and switch no backend.

    (Keras imports pyplot itself at `import keras`; what matters is that no figure lands in pyplot's list.)"""
    code = ("import sys, matplotlib\n"
            "matplotlib.use('svg')\n"
            "import numpy as np\n"
            "from reprlearn.evaluation import figures\n"
            "figures.plot_roc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([True, True, False, False]), 0.0, 1.0, "
            f"{str(tmp_path / 'roc.png')!r})\n"
            "import matplotlib.pyplot as plt\n"
            "print(matplotlib.get_backend(), plt.get_fignums())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["svg", "[]"], done.stderr[-2000:]
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
