"""Every Python block of README.md runs as pasted: each on its own, in a fresh interpreter,
in an empty folder. The bash blocks that are the README's two commands are run by CI
(.ci/run), not here."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def blocks(language):
    """(id, code) of every fenced block in ``language``; the id names the section."""
    found = []
    for match in FENCE.finditer(README):
        if match.group(1) != language:
            continue
        prose = FENCE.sub("", README[:match.start()])  # '#' in code is no heading
        headings = re.findall(r"^#+ (.+)$", prose, re.MULTILINE)
        section = re.sub(r"\W+", "-", headings[-1].lower()).strip("-") if headings else "top"
        line = README[:match.start()].count("\n") + 1
        found.append((f"{section}-line{line}", match.group(2)))
    return found


PYTHON_BLOCKS = blocks("python")


def test_readme_has_python_blocks():
    assert len(PYTHON_BLOCKS) >= 5


@pytest.mark.parametrize("code", [code for _, code in PYTHON_BLOCKS],
                         ids=[name for name, _ in PYTHON_BLOCKS])
def test_python_block_runs_as_pasted(code, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONWARNINGS="error::DeprecationWarning:__main__")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"README block failed:\n{code}\n--- stderr:\n{proc.stderr[-3000:]}"


def test_ci_runs_the_readme_test_command_verbatim():
    """.ci/run runs the README's "Run the tests" command as written, then the slow group."""
    commands = [code.strip() for _, code in blocks("bash")]
    test_command = next(c for c in commands if c.endswith("&& pytest"))
    in_venv = test_command.split(". .venv/bin/activate && ", 1)[1]
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert in_venv in lines
    assert lines.index("pytest -m slow") > lines.index(in_venv)
