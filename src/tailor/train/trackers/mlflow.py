"""MLflow, with the Hugging Face Trainer's environment variables: MLFLOW_TRACKING_URI (default
here: a SQLite store in the run's folder, OUT/mlflow.db, so nothing needs a server),
MLFLOW_EXPERIMENT_NAME, MLFLOW_TAGS (a JSON object), MLFLOW_RUN_ID (continue that run).
The config goes in as params, the final model's path as the tag `final_model`."""

from __future__ import annotations

import json
import os
import time

_MAX_PARAM = 6000  # MLflow's limit on a param value's length


class _MLflow:
    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_key(k), v, now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)

    def finish(self, final: str | None) -> None:
        if final is not None:
            self.client.set_tag(self.run_id, "final_model", final)
        self.client.set_terminated(self.run_id, status="FINISHED" if final is not None else "KILLED")


def _key(name: str) -> str:
    """MLflow keys allow letters, digits, _ - . space / : only."""
    return "".join(c if c.isalnum() or c in "_-. /:" else "_" for c in name)


def tracking_uri(out) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out / 'mlflow.db').resolve()}"


def start(ctx) -> _MLflow:
    import logging

    from mlflow import MlflowClient
    from mlflow.entities import Param, RunTag

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its table-creation chatter in the run's log
    client = MlflowClient(tracking_uri=tracking_uri(ctx.out))
    run_id = ctx.state.get("run_id") or os.environ.get("MLFLOW_RUN_ID")
    if run_id is None:
        exp = client.get_experiment_by_name(ctx.project)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(ctx.project)
        tags = {**json.loads(os.environ.get("MLFLOW_TAGS") or "{}"), **{t: "" for t in ctx.tags}}
        run_id = client.create_run(exp_id, run_name=ctx.run_name, tags=tags).info.run_id
        params = [Param(k, json.dumps(v) if not isinstance(v, str) else v)
                  for k, v in ctx.config.items() if v is not None]
        client.log_batch(run_id, params=[Param(p.key, p.value[:_MAX_PARAM]) for p in params],
                         tags=[RunTag("tailor.out", str(ctx.out.resolve()))], synchronous=True)
    else:
        client.update_run(run_id, status="RUNNING")
    ctx.state = {"run_id": run_id, "tracking_uri": client.tracking_uri}
    return _MLflow(client, run_id)
