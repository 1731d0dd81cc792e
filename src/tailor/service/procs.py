"""The training processes of the service: the environment they get, how they start, and how
none of them outlives the server.

A job's process sees only an allowlist of the server's environment: nothing that names a
credential (HF_TOKEN, API keys, cloud keys) reaches it unless the operator passes the variable
by name (`--job-env NAME`), and the Hugging Face login cache is hidden from it, so a tenant's job
never downloads or pushes with the operator's token. Each job is its own process group (a
torchrun job's ranks included) whose leader dies with the server (PR_SET_PDEATHSIG); a server
that was killed anyway finds the leftovers of a job by its folder and kills them at start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tailor import lifetime

# What a training process needs to run, find its caches and reach the GPU; never a secret.
ENV_KEEP = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "SHELL",
    "PYTHONPATH", "PYTHONHASHSEED", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "TAILOR_HOME", "TAILOR_FUSED", "HF_HOME", "HF_HUB_CACHE", "HF_ENDPOINT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "XDG_CACHE_HOME", "CUDA_VISIBLE_DEVICES", "CUDA_HOME",
    "PYTORCH_CUDA_ALLOC_CONF", "MALLOC_ARENA_MAX", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
    "http_proxy", "https_proxy", "no_proxy",
})
ENV_KEEP_PREFIXES = ("LC_", "NCCL_", "GLOO_", "KMP_")
_THREADS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def job_env(threads: int, *, extra: tuple[str, ...] = (), hub_token: str | None = None,
            source: dict | None = None) -> dict[str, str]:
    """A training process's environment: the allowlist, the operator's `extra` names, bounded
    thread pools (so a job never takes the server's core), and the project's own Hub token when
    the operator gave it one. The login cache's path points nowhere."""
    src = os.environ if source is None else source
    env = {k: v for k, v in src.items() if k in ENV_KEEP or k.startswith(ENV_KEEP_PREFIXES) or k in extra}
    env.update({name: str(threads) for name in _THREADS})
    env["HF_TOKEN_PATH"] = os.devnull  # huggingface_hub's `hf auth login` token file: none
    env["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"
    env[lifetime.ENV] = "1"  # and so do its torchrun launcher and ranks
    if hub_token:
        env["HF_TOKEN"] = hub_token
    return env


def spawn(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """`python -m tailor.cli train ARGS --quiet` in a new process group (session), output to `log`."""
    with log.open("ab") as logf:
        return subprocess.Popen([sys.executable, "-m", "tailor.cli", "train", *args, "--quiet"],
                                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, preexec_fn=lifetime.die_with_parent)


def kill_group(pgid: int | None, sig: int = signal.SIGKILL) -> None:
    if not pgid:
        return
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_leftovers(folder: Path) -> int:
    """Kill every process still running out of a job's `folder` (its ranks under torchrun, or a
    trainer whose server was SIGKILLed on a system without PDEATHSIG), found by command line.
    Returns how many were killed. Linux only (reads /proc)."""
    needle = str(folder).encode()
    killed = 0
    proc = Path("/proc")
    if not proc.is_dir():
        return 0
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and b"tailor" in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
    return killed
