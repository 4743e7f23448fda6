"""Every Python block of README.md and of the pages in DOCUMENTS runs as pasted: each on its
own, in a fresh namespace and an empty folder of its own, all in one fresh interpreter (one
torch import for all). The bash blocks that are the README's two commands are run by CI
(.ci/run), not here."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
README = (ROOT / "README.md").read_text()
DOCUMENTS = ("README.md", "docs/quickstart.md", "docs/deployment.md", "docs/cli.md",
             "docs/benchmarks.md", "docs/checking-gradients.md", "docs/gradient-flow.md",
             "docs/why-gradients-vanish.md", "docs/limitations.md", "docs/cuda.md",
             "docs/developing.md")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def blocks(language, document="README.md"):
    """(id, code) of every fenced block in ``language``; the id names the page (but the
    README) and the section."""
    text = (ROOT / document).read_text()
    page = "" if document == "README.md" else Path(document).stem + "-"
    found = []
    for match in FENCE.finditer(text):
        if match.group(1) != language:
            continue
        prose = FENCE.sub("", text[:match.start()])  # '#' in code is no heading
        headings = re.findall(r"^#+ (.+)$", prose, re.MULTILINE)
        section = re.sub(r"\W+", "-", headings[-1].lower()).strip("-") if headings else "top"
        line = text[:match.start()].count("\n") + 1
        found.append((f"{page}{section}-line{line}", match.group(2)))
    return found


PYTHON_BLOCKS = [block for document in DOCUMENTS for block in blocks("python", document)]


def test_readme_and_pages_have_python_blocks():
    assert blocks("python")  # the quickstart
    for document in ("docs/quickstart.md", "docs/why-gradients-vanish.md"):
        assert blocks("python", document), document


# Runs each block with exec in a fresh namespace and its own empty folder; what a block
# changes in torch (say, `torch.nn.RNN = rnnkern.RNN`) is undone before the next one.
DRIVER = """
import json, os, sys, traceback, types
import torch
blocks, folder = json.load(sys.stdin), sys.argv[1]
results = []
for i, code in enumerate(blocks):
    os.chdir(os.path.join(folder, str(i)))
    saved, main = torch.nn.RNN, sys.modules["__main__"]
    script = types.ModuleType("__main__")  # a fresh module, as `python block.py` runs it
    sys.modules["__main__"] = script
    try:
        exec(compile(code, f"<README block {i}>", "exec"), script.__dict__)
        results.append(None)
    except BaseException:
        results.append(traceback.format_exc())
    finally:
        torch.nn.RNN, sys.modules["__main__"] = saved, main
print("RESULTS " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def block_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    for i in range(len(PYTHON_BLOCKS)):
        (folder / str(i)).mkdir()
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(folder)], cwd=folder, env=env,
                          input=json.dumps([code for _, code in PYTHON_BLOCKS]),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULTS "))
    return json.loads(line[len("RESULTS "):])


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)),
                         ids=[name for name, _ in PYTHON_BLOCKS])
def test_python_block_runs_as_pasted(index, block_results):
    error = block_results[index]
    assert error is None, f"block failed:\n{PYTHON_BLOCKS[index][1]}\n---\n{error}"


def test_ci_runs_the_readme_test_command_verbatim():
    """.ci/run runs the README's "Run the tests" command as written, then the slow group."""
    commands = [code.strip() for _, code in blocks("bash")]
    test_command = next(c for c in commands if c.endswith("&& pytest"))
    in_venv = test_command.split(". .venv/bin/activate && ", 1)[1]
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert in_venv in lines
    assert lines.index("pytest -m slow") > lines.index(in_venv)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_picture_and_link_to_a_file_exists(document):
    """![…](path) and […](path) to a file of the repository, relative to the page."""
    text = FENCE.sub("", (ROOT / document).read_text())
    targets = re.findall(r"\]\(([^)#\s]+)\)", text)
    local = [t for t in targets if "://" not in t]
    for target in local:
        assert ((ROOT / document).parent / target).exists(), f"{document}: {target}"
