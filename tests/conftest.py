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
