"""Trackio: local-first (a SQLite file per project under $TRACKIO_DIR, by default
~/.cache/huggingface/trackio); `trackio show` opens its dashboard. $TRACKIO_SPACE_ID or
$TRACKIO_SERVER_URL send it elsewhere, as trackio itself decides."""

from __future__ import annotations


class _Trackio:
    def __init__(self, run):
        self.run = run

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def finish(self, final: str | None) -> None:
        if final is not None:
            self.run.log({"final_model": final})
        self.run.finish()


def start(ctx) -> _Trackio:
    import contextlib
    import sys

    import trackio

    # resume="allow": a resumed tailor run continues the trackio run of the same name. trackio
    # says what it did on stdout, which is tailor train's answer (the final folder): stderr.
    with contextlib.redirect_stdout(sys.stderr):
        run = trackio.init(project=ctx.project, name=ctx.state.get("name", ctx.run_name), config=ctx.config,
                           resume="allow" if ctx.resumed_step is not None else "never", embed=False)
    ctx.state = {"project": ctx.project, "name": run.name}
    return _Trackio(run)
