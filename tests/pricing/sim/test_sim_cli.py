from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pricing.config import TopicsSettings, load_settings
from pricing.sim.cli import _live_kafka, register
from pricing.sim.live import LiveTopics


@pytest.fixture()
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pricing")
    register(p.add_subparsers(dest="command", required=True))
    return p


def test_register_adds_the_commands_with_their_defaults(parser: argparse.ArgumentParser) -> None:
    live = parser.parse_args(["simulate", "live"])
    assert (live.rate, live.copies, live.intensity, live.duration, live.no_loop, live.answer_timeout, live.scenario,
            live.continue_from) == (None, None, 1.0, 60.0, False, 30.0, "default", None)  # one copy of the market  # fmt: skip
    busy = parser.parse_args(["simulate", "live", "--rate", "50", "--intensity", "10"])
    assert (busy.rate, busy.intensity) == (50.0, 10.0)
    for argv in (["--rate", "5", "--copies", "2"], ["--intensity", "0"], ["--copies", "0"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["simulate", "live", *argv])
    conf, topics = _live_kafka(live, None)
    assert conf == {"bootstrap.servers": "127.0.0.1:9092"}
    defaults = TopicsSettings()
    assert topics == LiveTopics(behaviour=defaults.behaviour.name, market=defaults.market.name,
                                requests=defaults.requests.name, priced=defaults.priced.name,
                                catalogue=defaults.catalogue.name, recommend_requests=defaults.recommend_requests.name,
                                recommendations=defaults.recommendations.name)  # fmt: skip
    assert (live.recommend_share, live.recommend_k) == (0.0, 10)
    assert parser.parse_args(["simulate", "live", "--recommend-share", "0.25", "--recommend-k", "5"]).recommend_share == 0.25
    hist = parser.parse_args(["simulate", "history", "--days", "3", "--out", "x", "--scenario", "price-war", "--seed", "5"])
    assert (hist.days, hist.out, hist.scenario, hist.seed, hist.to_kafka) == (3, Path("x"), "price-war", 5, False)
    hist = parser.parse_args(["simulate", "history", "--days", "7", "--to-kafka", "--bootstrap", "h:1"])
    assert (hist.out, hist.to_kafka, hist.bootstrap) == (None, True, "h:1")
    ev = parser.parse_args(["evaluate", "--scenario", "high-sensitivity"])
    assert (ev.scenario, ev.out, ev.days) == ("high-sensitivity", None, 7)
    for args in (live, hist, ev):
        assert callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate", "history", "--days", "0", "--out", "x"])


def test_bad_input_is_one_line_and_exit_2(parser: argparse.ArgumentParser, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        ["simulate", "history", "--days", "1", "--out", str(tmp_path / "h"), "--scenario", "nope"],
        ["simulate", "live", "--scenario", "nope"],
        ["simulate", "history", "--days", "1"],  # neither --out nor --to-kafka
        ["simulate", "live", "--continue-from", str(tmp_path), "--users", "50", "--products", "5"],  # no end state there
        ["evaluate", "--scenario", "nope"],
        ["evaluate", "--policy", "no_such_module_xyz:Policy", "--users", "50", "--products", "5", "--days", "1"],
        ["evaluate", "--policy", "pricing.sim.market:Guardrails", "--users", "50", "--products", "5", "--days", "1"],
    ]
    for argv in cases:
        args = parser.parse_args(argv)
        assert args.func(args) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    (tmp_path / "file").write_text("x")
    args = parser.parse_args(["simulate", "history", "--days", "1", "--out", str(tmp_path / "file")])
    assert args.func(args) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_evaluate_command_writes_the_report(parser: argparse.ArgumentParser, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    args = parser.parse_args(["evaluate", "--users", "600", "--products", "40", "--days", "2", "--out", str(out),
                              "--policy", "pricing.sim.policies:StaticMultiplierPolicy"])  # fmt: skip
    assert args.func(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cumulative_profit.png", "evaluation.csv", "evaluation.md"]
    printed = capsys.readouterr().out
    for name in ("static-reference", "best-static", "competitor-match", "oracle", "always-2x", "static-x1"):
        assert f"| {name}" in printed


def test_handlers_accept_the_project_settings(parser: argparse.ArgumentParser, tmp_path: Path) -> None:
    settings = load_settings(
        state_dir=tmp_path / "state",
        kafka={"bootstrap_servers": "10.0.0.1:9093", "topics": {"priced": {"name": "answers"}}},
    )
    live = parser.parse_args(["simulate", "live"])
    conf, topics = _live_kafka(live, settings)
    assert conf["bootstrap.servers"] == "10.0.0.1:9093" and topics.priced == "answers"
    assert topics.requests == settings.kafka.topics.requests.name
    live = parser.parse_args(["simulate", "live", "--bootstrap", "h:1"])
    assert _live_kafka(live, settings)[0]["bootstrap.servers"] == "h:1"
    ev = parser.parse_args(["evaluate", "--users", "300", "--products", "20", "--days", "1"])
    assert ev.func(ev, settings) == 0  # called the way pricing.cli calls it
    assert (tmp_path / "state" / "eval" / "default" / "evaluation.csv").is_file()


def test_history_to_kafka_and_live_continuing_it_fail_in_one_line_without_a_broker(
    parser: argparse.ArgumentParser, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--to-kafka checks the broker before simulating; --continue-from loads the end state --out wrote, for the same
    market only. (The real clients against a closed port: exit 1, one line.)"""
    monkeypatch.setattr("pricing.sim.cli.CONNECT_TIMEOUT_S", 1.0)
    small = ["--users", "50", "--products", "5"]
    args = parser.parse_args(["simulate", "history", "--days", "1", "--to-kafka", "--bootstrap", "127.0.0.1:1", *small])
    assert args.func(args) == 1
    err = capsys.readouterr()
    assert err.err.startswith("error: cannot reach Kafka at 127.0.0.1:1") and err.err.count("\n") == 1
    assert "simulated" not in err.out  # it failed before simulating
    args = parser.parse_args(["simulate", "history", "--days", "1", "--out", str(tmp_path / "h"), *small])
    assert args.func(args) == 0
    assert "market_end_state.npz" in capsys.readouterr().out
    live = ["simulate", "live", "--continue-from", str(tmp_path / "h"), "--bootstrap", "127.0.0.1:1", "--duration", "1"]
    args = parser.parse_args([*live, *small])
    assert args.func(args) == 1  # loaded, then no broker
    assert capsys.readouterr().err.startswith("error: cannot reach Kafka")
    args = parser.parse_args([*live, *small, "--seed", "3"])
    assert args.func(args) == 2  # another market
    assert "holds the market 'default seed 7" in capsys.readouterr().err
