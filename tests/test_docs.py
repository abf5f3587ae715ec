"""The README, export/README.md and every page of the documentation site (docs/) run as written: every shell,
console and Python block, in a scratch folder.

Shell blocks run line by line with `bash`; `text` blocks whose lines start with `$ ` are console
transcripts, run and compared with the lines that follow; the Python blocks of a file run in
order in one fresh interpreter. The few commands a test cannot run are listed in NOT_RUN with the
reason, and the test fails if the docs hold one that is neither run nor listed.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.photo_folder import make_photo_folder

# The module-scoped fixtures run every docs command once, inside the setup of the first test that asks: about
# 4 minutes alone, and past pytest's 10-minute budget when the other worker and a slow machine share the two cores
# (a CI run failed so). Each command keeps its own 600 s subprocess timeout, so a hang still fails.
pytestmark = pytest.mark.timeout(1800)

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _site_pages() -> list[str]:
    """The site's pages in mkdocs.yml's navigation order (the order a reader meets them), API reference aside."""
    import yaml

    def walk(entries):
        for entry in entries:
            for value in (entry.values() if isinstance(entry, dict) else [entry]):
                yield from (walk(value) if isinstance(value, list) else [value])

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    return [f"docs/{page}" for page in walk(nav) if not page.startswith("reference/")]


NOT_RUN = {
    "make demo": "the full demo (minutes); its steps run below on a small demo run",
    "make test": "runs this test (make test-all too)",
    "make docs": "builds the site; make test-all runs it with --strict",
    ".venv/bin/tensorboard": "a server that does not exit",
    "docker run": "needs Docker and the TF Serving image",
    "curl": "needs the TF Serving container",
    ".venv/bin/python benchmarks/": "minutes each; benchmarks print tables, tests check correctness",
    "reprlearn train configs/openset": "the open-set recipe (minutes); test_openset.py trains its digits twin",
    "reprlearn train configs/verification_": "four Fashion-MNIST trainings (minutes); test_verifiers.py trains "
                                             "their digits twins",
    "reprlearn verify runs/verification_": "needs a verification run above; test_verifiers.py verifies with its "
                                          "digits twin",
    "reprlearn train configs/crossview": "two towers on the benchmark's 29,000 pairs (minutes); "
                                         "test_cross_view_runs.py trains their digits twin",
    **{f"reprlearn {command} runs/crossview": "needs the two-tower run above and the user's folders; "
                                              "test_cross_view_serving.py runs each command on a digits twin"
       for command in ("index", "identify", "evaluate", "embed", "verify", "export")},
    "reprlearn train configs/self_supervised.yaml": "SimCLR on Fashion-MNIST (minutes); test_self_supervised.py "
                                                    "trains every method on generated shapes",
    "reprlearn tune tuner/crossview": "a search over the benchmark's pairs (minutes); test_cross_view_serving.py "
                                      "tunes a digits twin",
}
# A small stand-in for `make demo`'s run, so the docs' commands on runs/demo take seconds.
SMALL_DEMO = ["train.epochs=1", "train.steps_per_epoch=3", "data.max_train=2000", "data.max_test=600",
              "eval.verification_pairs=600", "eval.projection=pca"]


def blocks(doc: str) -> list[tuple[str, str]]:
    return [(lang, body) for lang, body in BLOCK.findall((ROOT / doc).read_text())]


def shell_commands(body: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [line.split(" #")[0].strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def _skipped(command: str) -> bool:
    return any(command.startswith(prefix) for prefix in NOT_RUN)


DOCS = ["README.md", *_site_pages(), "export/README.md"]
PYTHON_DOCS = [doc for doc in DOCS if "```python" in (ROOT / doc).read_text()]
SHELL_DOCS = [doc for doc in DOCS if any(not _skipped(command) for lang, body in blocks(doc) if lang in ("bash", "sh")
                                         for command in shell_commands(body))]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder that looks like the repository root to the docs: configs, tuner, export and .venv linked in."""
    folder = tmp_path_factory.mktemp("docs")
    for name in ("configs", "tuner", "export", ".venv"):
        (folder / name).symlink_to(ROOT / name)
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    overrides = [arg for setting in SMALL_DEMO for arg in ("--set", setting)]
    subprocess.run([str(ROOT / ".venv/bin/reprlearn"), "train", "configs/demo.yaml", "--out", "runs/demo", "--quiet",
                    *overrides], cwd=folder, env=env, check=True, capture_output=True, timeout=600)
    make_photo_folder(folder / "photos", classes=6, per_class=20, seed=0)  # the README's "your own photos"
    return folder, env


def _run_shell(command: str, scratch) -> subprocess.CompletedProcess:
    folder, env = scratch
    return subprocess.run(["bash", "-c", command], cwd=folder, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def shell_results(scratch):
    """Every runnable shell command of the docs, run once in document order: `[(doc, command, result)]`."""
    return [(doc, command, _run_shell(command, scratch)) for doc in DOCS for lang, body in blocks(doc)
            if lang in ("bash", "sh") for command in shell_commands(body) if not _skipped(command)]


@pytest.mark.slow
@pytest.mark.parametrize("doc", SHELL_DOCS)
def test_every_shell_block_runs(doc, shell_results):
    ran = [(command, result) for name, command, result in shell_results if name == doc]
    assert ran, doc
    for command, result in ran:
        assert result.returncode == 0, f"{doc}: {command}\n{result.stderr[-3000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS)
def test_console_transcripts_print_what_they_show(doc, scratch):
    for lang, body in blocks(doc):
        lines = body.splitlines()
        if lang not in ("text", "console") or not lines or not lines[0].startswith("$ "):
            continue
        result = _run_shell(lines[0][2:], scratch)
        assert (result.stdout + result.stderr).strip().splitlines() == lines[1:], lines[0]


def test_every_site_page_is_in_the_navigation():
    pages = {f"docs/{path.relative_to(ROOT / 'docs')}" for path in (ROOT / "docs").rglob("*.md")}
    listed = set(_site_pages()) | {f"docs/reference/{path.name}" for path in (ROOT / "docs/reference").glob("*.md")}
    assert pages == listed
    assert len(PYTHON_DOCS) >= 8 and len(SHELL_DOCS) >= 3, (PYTHON_DOCS, SHELL_DOCS)


@pytest.mark.slow
@pytest.mark.parametrize("doc", PYTHON_DOCS)
def test_python_blocks_run_in_order_in_a_fresh_interpreter(doc, scratch, shell_results):
    # After the shell blocks (shell_results): the Python blocks use what they write.
    code = "\n\n".join(body for lang, body in blocks(doc) if lang == "python")
    folder, env = scratch
    result = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"{doc}\n{result.stderr[-4000:]}"


def test_only_listed_commands_are_not_run():
    found = {prefix for doc in DOCS for lang, body in blocks(doc) if lang in ("bash", "sh")
             for command in shell_commands(body) for prefix in NOT_RUN if command.startswith(prefix)}
    assert found == set(NOT_RUN), "NOT_RUN lists a command the docs no longer hold: remove it"
    for doc in DOCS:
        languages = {lang for lang, _ in blocks(doc)}
        assert languages <= {"bash", "python", "text", "yaml"}, f"{doc}: a block in {languages} is never run"


def test_yaml_blocks_are_valid_config_sections():
    import yaml
    from reprlearn.config import config_from_dict

    found = [body for doc in DOCS for lang, body in blocks(doc) if lang == "yaml"]
    assert found
    for body in found:
        config_from_dict(yaml.safe_load(body))
