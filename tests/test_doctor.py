"""`tailor doctor`: its documented keys on this machine, a Hub token never shown, every problem with a fix."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tailor import doctor

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run(*args, **env):
    full = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **env}
    return subprocess.run([sys.executable, "-m", "tailor.cli", "doctor", *args], env=full, capture_output=True,
                          text=True, timeout=180)


def test_json_has_the_documented_keys_and_never_shows_the_token(tmp_path):
    secret = "hf_doctorTestTokenValue123"
    run = _run("--json", "--measure-seconds", "0.01", HF_TOKEN=secret, TAILOR_HOME=str(tmp_path / "home"))
    assert run.returncode in (0, 1), run.stderr
    found = json.loads(run.stdout)
    assert tuple(found) == doctor.KEYS
    assert secret not in run.stdout + run.stderr and found["hub"]["token"] is True
    assert set(found["versions"]) >= {"torch", "transformers", "peft", "tailor"}
    cpu = next(d for d in found["devices"] if d["type"] == "cpu")
    assert isinstance(cpu["bf16"], bool) and isinstance(cpu["fp16"], bool)
    assert found["cpu"]["cores"] >= 1 and found["cpu"]["torch_threads"] >= 1
    if sys.platform == "linux":
        assert set(found["cpu"]["flags"]) == set(doctor.CPU_FLAGS)
    fp32 = next(s for s in found["speed"] if s["device"] == "cpu" and s["dtype"] == "float32")
    assert fp32["matmul_gflops"] > 0 and fp32["gemv_gbps"] > 0 and fp32["gemv_ms"] > 0
    assert {s["dtype"] for s in found["speed"] if s["device"] == "cpu"} == {"float32"} | {
        d for d, key in (("bfloat16", "bf16"), ("float16", "fp16")) if cpu[key]}
    assert set(found["extras"]) == set(doctor.EXTRAS) and all(isinstance(v, bool) for v in found["extras"].values())
    assert found["disk"]["tailor_home"]["path"] == str(tmp_path / "home") and found["disk"]["tailor_home"]["bytes"] == 0
    assert found["disk"]["tailor_home"]["free_bytes"] > 0
    for p in found["problems"]:
        assert p["level"] in ("warning", "info") and p["problem"] and p["fix"]
    assert run.returncode == int(any(p["level"] == "warning" for p in found["problems"]))


def test_summary_is_readable_and_names_the_sections():
    run = _run("--measure-seconds", "0.01")
    assert run.returncode in (0, 1), run.stderr
    for words in ("Devices", "Speed", "Hub token:", "Caches and disk", "Optional extras:", "torch "):
        assert words in run.stdout


def test_problems_come_with_fixes():
    found = {"devices": [{"type": "cpu", "name": "x", "bf16": True, "fp16": True}],
             "cpu": {"fast_bf16": True, "torch_threads": 1, "cores": 8, "omp_num_threads": "1"},
             "speed": [{"device": "cpu", "dtype": "float32", "matmul_gflops": 100.0},
                       {"device": "cpu", "dtype": "float16", "matmul_gflops": 2.0},
                       {"device": "cpu", "dtype": "bfloat16", "error": "RuntimeError: nope"}],
             "versions": {"transformers": "4.57.0", "peft": None},
             "disk": {"hf_cache": {"path": "/c", "bytes": 0, "free_bytes": 10 ** 9}},
             "hub": {"token": True}, "extras": {"wandb": False}}

    class FakeTorch:
        class version:
            cuda = None

    got = {p["problem"].split(" ")[0] + "|" + p["level"]: p["fix"] for p in doctor.problems(found, FakeTorch)}
    assert "pip install 'transformers>=5,<6'" in got["transformers|warning"]
    assert "peft" in got["peft|warning"] and "OMP_NUM_THREADS" in got["torch|warning"]
    assert "$TAILOR_HOME" in got["Only|warning"] and "--dtype auto" in got["float16|info"]
    assert got["Optional:|info"] == "pip install 'tailor[wandb]'" and "Timing|warning" in got
