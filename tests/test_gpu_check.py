"""bench/gpu_check.sh in its CPU dry mode: every step of the GPU check runs (tiny) and its
JSON holds what the GPU run would report, so the script cannot rot between GPU loans."""

import json

from conftest import REPO, TEST_DATA, run_command


def test_dry_gpu_check_runs_every_step_and_writes_its_json(tmp_path):
    output = tmp_path / "gpu_check.json"
    run_command(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry", f"--output={output}",
                 f"--images={TEST_DATA / 'chest_xray' / 'test' / 'NORMAL'}"], timeout=600)
    result = json.loads(output.read_text())
    assert result["dry"] and result["failed"] == []
    steps = result["steps"]
    assert set(steps) == {"tsynd_run_xla_off", "tsynd_run_xla_on", "bench_run",
                          "bench_generators", "export_reload"}
    for name in ("tsynd_run_xla_off", "tsynd_run_xla_on"):
        run = steps[name]["results"]
        assert 0.0 <= run["test/acc"] <= 1.0 and run["precision"] == "float32"  # a CPU
    bench = steps["bench_run"]
    assert all(rate > 0 for rate in bench["rows"].values())
    assert bench["device"]["gpus"] == [] and "gpu_peak_mib" in bench["memory"]
    measured = {(row["generator"], row["measure"]) for row in
                steps["bench_generators"]["rows"]}
    assert {("diffusion", "train"), ("diffusion", "sample")} <= measured
    reload = steps["export_reload"]
    normal = list((TEST_DATA / "chest_xray" / "test" / "NORMAL").glob("*.jpeg"))
    assert reload["images"] == len(normal) > 0 and reload["failed"] == 0
