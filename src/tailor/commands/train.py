"""`tailor train [CONFIG.yaml] --data train.jsonl ...`: fine-tune a model (LoRA or full).

The YAML file and the flags map onto one TrainConfig; flags win. `--resume OUT_DIR` continues
the run saved there (its saved config, with any flags given now on top; a flag that would change
the run's plan is refused, see tailor.train.session.RESUME_REFUSES). Exit status: 0 when done,
130 after Ctrl-C and 143 after SIGTERM (a checkpoint saved, the resume command printed).

`--nproc N` runs the same command again as N processes through torchrun (tailor.train.distributed);
`torchrun --nproc-per-node N -m tailor train ...` does the same, and spans machines with --nnodes."""

from __future__ import annotations

import argparse
import signal

from tailor import config


def add_arguments(parser) -> None:
    from tailor.train.config import TrainConfig

    parser.add_argument("config_file", nargs="?", metavar="CONFIG.yaml",
                        help="A YAML file of config keys (see examples/*.yaml); flags override it.")
    parser.add_argument("--quiet", action="store_true", help="Print nothing but errors.")
    config.add_arguments(parser, TrainConfig, skip=("report_to",))
    parser.add_argument("--report-to", action="append", dest="report_to", default=argparse.SUPPRESS,
                        metavar="TRACKER", help=config.field_docs(TrainConfig)["report_to"])


def run(args) -> int:
    from tailor import lifetime
    from tailor.train import TrainConfig, distributed, resume_config, train

    lifetime.inherit()  # a service's job (and each of its torchrun ranks) dies with its parent
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config_file", "quiet")}
    file_values = config.read_yaml(args.config_file) if args.config_file else {}
    if flags.get("resume") or file_values.get("resume"):
        out = flags.pop("resume", None) or file_values.pop("resume")
        cfg = resume_config(out, **{**file_values, **flags})
    else:
        cfg = config.build(TrainConfig, file_values, flags)
    if cfg.nproc > 1 and not distributed.launched():
        return distributed.relaunch(cfg, quiet=args.quiet)
    result = train(cfg, quiet=args.quiet)
    if result.interrupted:  # 128 + the signal, as a shell reports a process it killed: 130 Ctrl-C, 143 SIGTERM
        return 128 + (result.stop_signal or signal.SIGINT)
    if distributed.is_main():
        print(result.final)
    return 0
