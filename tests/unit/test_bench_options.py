"""The benchmark's options become its plan; bad values are refused in one line."""

from __future__ import annotations

import pytest

from bench.harness import build_parser, plan_from


def test_clients_choose_row_7s_client_counts_for_every_way() -> None:
    plan = plan_from(build_parser().parse_args(["--clients", "16,1,16"]))
    assert plan.app_clients == plan.app_variant_clients == (1, 16)
    quick = plan_from(build_parser().parse_args(["--quick", "--clients", "4"]))
    assert quick.app_clients == (4,) and quick.app_variant_clients == (1,)
    default = plan_from(build_parser().parse_args([]))
    assert default.app_clients == (1, 16, 64)


@pytest.mark.parametrize("bad", ["0", "x", ",", "-3"])
def test_bad_client_counts_are_refused(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--clients", bad])
    assert "--clients" in capsys.readouterr().err


def test_shardflow_bench_passes_the_client_counts_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from shardflow.cli.bench import harness_argv
    from shardflow.cli.main import build_parser as cli_parser

    monkeypatch.delenv("SHARDFLOW_CLIENTS", raising=False)
    args = cli_parser().parse_args(["bench", "--rows", "7", "--clients", "1,16"])
    argv = harness_argv(args)
    assert argv[argv.index("--clients") + 1] == "1,16"
    assert plan_from(build_parser().parse_args(argv)).app_clients == (1, 16)
    monkeypatch.setenv("SHARDFLOW_CLIENTS", "4")
    assert "--clients" in harness_argv(cli_parser().parse_args(["bench"]))
