"""`inspectd regrade` without Ray, its usage errors, and a command line that never imports Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.regrade.conftest import requires_ray

REPO_ROOT = Path(__file__).resolve().parents[2]
WITHOUT_MODULES = REPO_ROOT / "tests" / "bench" / "without_modules.py"


def _inspectd(tmp_path: Path, *args: str, hide: str | None = None) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "inspectd_main.py"
    script.write_text("import sys\nfrom inspectd.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    prefix = [str(WITHOUT_MODULES), hide] if hide else []
    return subprocess.run([sys.executable, *prefix, str(script), *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT, check=False)


def test_without_ray_it_says_in_one_line_how_to_install_it(tmp_path):
    result = _inspectd(tmp_path, "regrade", str(tmp_path), "--out", str(tmp_path / "out"), hide="ray")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["inspectd regrade needs Ray: pip install 'inspectd[cluster]'"]
    assert not (tmp_path / "out").exists()


def test_the_command_line_does_not_import_ray(tmp_path):
    probe = ("import sys\nfrom inspectd.cli import main\ntry:\n    main(['regrade', '--help'])\n"
             "except SystemExit:\n    pass\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'pyarrow', 'numba', 'cv2')))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                            cwd=REPO_ROOT, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


@requires_ray
def test_an_input_naming_nothing_is_exit_2_before_ray_starts(tmp_path):
    result = _inspectd(tmp_path, "regrade", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "no such file, folder or manifest" in result.stderr
    assert not (tmp_path / "out").exists()


@requires_ray
def test_a_missing_journal_is_exit_2(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    result = _inspectd(tmp_path, "regrade", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"),
                       "--journal", str(tmp_path / "journal.sqlite3"))
    assert result.returncode == 2
    assert "no such journal" in result.stderr
