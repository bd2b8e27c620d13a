"""bench/paused.sh: the sweep's process group is stopped while the command runs and
continued after, however the command ends, and each pause becomes a timing window that the
report's cost table reads (tsynd_tf/report/cost.py)."""

import subprocess
from pathlib import Path

import pytest
from conftest import REPO, run_command

from tsynd_tf.report.cost import read_timing_windows

SCRIPT = REPO / "bench" / "paused.sh"


def state(pid: int) -> str:
    """R, S, T (stopped), ... as /proc shows the process."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.fixture
def sweep(tmp_path):
    """A sweep folder and a process group standing in for the sweep's cells."""
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "results.jsonl").write_text("")
    cells = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield folder, cells.pid
    cells.kill()
    cells.wait()


def test_the_sweep_is_stopped_while_the_command_runs_and_the_pause_recorded(sweep, tmp_path):
    folder, pgid = sweep
    seen = tmp_path / "seen"
    run_command(["bash", SCRIPT, pgid, folder, "a benchmark", "--", "bash", "-c",
                 f"cat /proc/{pgid}/stat > {seen}"])
    assert seen.read_text().rsplit(")", 1)[1].split()[0] == "T"
    assert state(pgid) != "T"  # continued
    [window] = read_timing_windows(folder)
    assert window["kind"] == "paused" and window["what"] == "a benchmark"
    assert window["start"] <= window["end"]

    # A failing command: the sweep goes on, the command's exit status is kept.
    run_command(["bash", SCRIPT, pgid, folder, "a failing one", "--", "false"], exit_code=1)
    assert state(pgid) != "T" and len(read_timing_windows(folder)) == 2


def test_a_wrong_process_group_or_folder_is_refused_before_anything_stops(sweep, tmp_path):
    folder, pgid = sweep
    ran = tmp_path / "ran"
    out = run_command(["bash", SCRIPT, 999999999, folder, "x", "--", "touch", ran], exit_code=2)
    assert "no process group 999999999" in out.stderr
    out = run_command(["bash", SCRIPT, pgid, tmp_path, "x", "--", "touch", ran], exit_code=2)
    assert "has no results.jsonl" in out.stderr and state(pgid) != "T"
    assert not ran.exists() and not (folder / "timing_windows.jsonl").exists()
