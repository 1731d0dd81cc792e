"""Every command's --help prints (help texts come from config docstrings, where a stray '%' once
made argparse raise instead of printing)."""

import pytest

from tailor.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_prints_its_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and command in out.splitlines()[0]


def test_subcommand_helps_print(capsys):
    for argv in (["data", "check", "--help"], ["data", "show", "--help"], ["data", "rag", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0, argv
        assert "usage: " in capsys.readouterr().out


def test_openmp_threads_spin_only_for_terminal_decoding():
    """generate and chat decode one sequence in the main thread: their OpenMP threads spin between
    the many small parallel regions; everything else (training, serving) keeps them asleep."""
    from tailor.cli import omp_wait_policy

    assert omp_wait_policy(["generate", "hello"]) == "ACTIVE"
    assert omp_wait_policy(["chat", "--model", "x"]) == "ACTIVE"
    assert omp_wait_policy(["serve"]) == omp_wait_policy(["train", "cfg.yaml"]) == "PASSIVE"
    assert omp_wait_policy([]) == "PASSIVE"
