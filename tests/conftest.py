import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# OpenMP threads sleep instead of spinning while waiting: far faster when cores are shared.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# No test may reach for the network; hub tests see an offline machine.
os.environ["HF_HUB_OFFLINE"] = "1"

from tiny import save_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama with a real byte-level BPE tokenizer and SmolLM2's chat template."""
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> Path:
    """Like tiny_model_dir but with no chat template (a base model)."""
    return save_tiny(tmp_path_factory.mktemp("tiny-base") / "model", chat_template=None)


# ---- optional tools: skipped where absent, unless TAILOR_REQUIRE_ALL=1 (.ci/run) makes that a failure


def _browser_missing() -> str | None:
    from browserkit import missing

    return missing()


def _llama_cpp_missing() -> str | None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        return f"llama-cpp-python does not import ({exc}); `make gguf` builds it"
    return None


def _sqlite_vec_missing() -> str | None:
    from tailor.rag.store import connect, sqlite_vec_problem

    return sqlite_vec_problem(connect(":memory:"))


OPTIONAL_TOOLS = {"browser": _browser_missing, "llama_cpp": _llama_cpp_missing, "sqlite_vec": _sqlite_vec_missing}
_why_missing: dict[str, str | None] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """`@pytest.mark.needs("llama_cpp")`: before any fixture, skip saying why the tool is missing;
    under TAILOR_REQUIRE_ALL=1 (CI, which installs every tool) fail instead, so a test that never
    ran cannot pass for one that did."""
    for mark in item.iter_markers("needs"):
        for tool in mark.args:
            if tool not in OPTIONAL_TOOLS:
                raise ValueError(f"@pytest.mark.needs({tool!r}): the known tools are {', '.join(OPTIONAL_TOOLS)}")
            if tool not in _why_missing:
                _why_missing[tool] = OPTIONAL_TOOLS[tool]()
            why = _why_missing[tool]
            if why is None:
                continue
            if os.environ.get("TAILOR_REQUIRE_ALL") == "1":
                pytest.fail(f"TAILOR_REQUIRE_ALL=1, but this test needs {tool}: {why}", pytrace=False)
            pytest.skip(f"needs {tool}: {why}")
