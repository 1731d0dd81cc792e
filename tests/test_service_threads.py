"""Training and serving threads are split: a job's training process gets a bounded thread count
(all cores but the server's one by default, `--train-threads` to choose), through its environment,
so chat stays responsive while a job trains."""

import subprocess
import sys

import pytest

from tailor.errors import UsageError
from tailor.service import Service
from tailor.service.worker import Worker, default_train_threads


@pytest.mark.parametrize("cores, threads", [(1, 1), (2, 1), (16, 15)])
def test_training_leaves_one_core_to_the_server_by_default(cores, threads):
    assert default_train_threads(cores) == threads


def test_the_training_process_runs_with_the_threads_it_is_given(tmp_path):
    env = Service(tmp_path / "a", train_threads=3).worker.child_env()
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "3"
    worker = Service(tmp_path / "b", train_threads=1).worker  # this machine may have 2 cores only
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                         env=worker.child_env(), capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"  # torch in the child sizes its thread pool from that environment
    assert int(Worker(worker.store).child_env()["OMP_NUM_THREADS"]) == default_train_threads()


def test_zero_train_threads_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="train-threads"):
        Service(tmp_path / "state", train_threads=0)
