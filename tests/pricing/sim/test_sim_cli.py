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
    assert (live.rate, live.duration, live.no_loop, live.answer_timeout, live.scenario) == (
        100.0, 60.0, False, 30.0, "default")  # fmt: skip
    conf, topics = _live_kafka(live, None)
    assert conf == {"bootstrap.servers": "127.0.0.1:9092"}
    defaults = TopicsSettings()
    assert topics == LiveTopics(behaviour=defaults.behaviour.name, market=defaults.market.name,
                                requests=defaults.requests.name, priced=defaults.priced.name)  # fmt: skip
    hist = parser.parse_args(["simulate", "history", "--days", "3", "--out", "x", "--scenario", "price-war", "--seed", "5"])
    assert (hist.days, hist.out, hist.scenario, hist.seed) == (3, Path("x"), "price-war", 5)
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
