"""docs/examples/verify_crossnet_golden.py verifies a CrossNet from the golden files alone.

The script runs in a subprocess that cannot import recspec's packages (nor torch): `python -I`
(no PYTHONPATH, no script directory on sys.path), cwd elsewhere, script and golden files copied
out of the repository, and a meta-path finder that refuses refimpl, accel, conformance and torch,
because the editable install would otherwise make them importable from anywhere.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.runner import GOLDEN_DIR

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "examples" / "verify_crossnet_golden.py"
BLOCKED = ("refimpl", "accel", "conformance", "torch", "torchrec")

# Runs the script as __main__ after making the blocked packages unimportable.
LAUNCHER = f"""
import runpy, sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError("blocked in the standalone reader test: " + name)
        return None
sys.meta_path.insert(0, Refuse())
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """The script and a copy of the golden set, in a directory outside the repository."""
    root = tmp_path_factory.mktemp("standalone")
    shutil.copy(SCRIPT, root / "verify.py")
    shutil.copytree(GOLDEN_DIR, root / "golden", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return root


def _run(root, *args, script="verify.py"):
    return subprocess.run([sys.executable, "-I", "-c", LAUNCHER, str(root / script), *args],
                          cwd=root, capture_output=True, text=True, timeout=120)


def test_the_launcher_cannot_import_recspec(outside):
    probe = outside / "probe.py"
    probe.write_text("import conformance\n")
    done = _run(outside, script="probe.py")
    assert done.returncode != 0 and "blocked in the standalone reader test: conformance" in done.stderr


def test_the_golden_copy_holds_no_python(outside):
    assert not list((outside / "golden").glob("*.py"))
    assert (outside / "golden" / "manifest.json").exists() and (outside / "golden" / "CrossNet.npz").exists()


def test_the_script_verifies_its_crossnet(outside):
    done = _run(outside, str(outside / "golden"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CrossNet.npz" in done.stdout and "normwise error 0" in done.stdout


def test_a_perturbed_crossnet_fails(outside):
    done = _run(outside, str(outside / "golden"), "--perturb")
    assert done.returncode == 1, done.stdout + done.stderr
    error = float(done.stdout.split("normwise error ")[1].split(",")[0])
    assert error > 1e-3


def test_an_unknown_schema_is_refused(outside, tmp_path):
    golden = tmp_path / "golden"
    shutil.copytree(outside / "golden", golden)
    manifest = golden / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"recspec-golden/1"', '"recspec-golden/2"'))
    done = _run(outside, str(golden))
    assert done.returncode == 1 and "expected 'recspec-golden/1', got 'recspec-golden/2'" in done.stderr


def test_a_tampered_file_is_refused(outside, tmp_path):
    golden = tmp_path / "golden"
    shutil.copytree(outside / "golden", golden)
    data = bytearray((golden / "CrossNet.npz").read_bytes())
    data[-100] ^= 1
    (golden / "CrossNet.npz").write_bytes(bytes(data))
    done = _run(outside, str(golden))
    assert done.returncode == 1 and "CrossNet.npz: sha256 differs" in done.stderr


def test_the_documented_reader_is_the_script():
    page = (SCRIPT.parents[1] / "golden_format.md").read_text()
    blocks = [b.split("```", 1)[0] for b in page.split("```python\n")[1:]]
    assert SCRIPT.read_text() in blocks
