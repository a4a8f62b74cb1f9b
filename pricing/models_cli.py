"""``pricing models list|show|promote|rollback``: the model registry from the command line.

Each sub-command takes ``--registry DIR``; the default is ``[models] registry_dir`` of the
settings, else ``<state_dir>/models`` (:func:`registry_dir`). Errors are
:class:`pricing_udfs.model.registry.RegistryError` (a ``ValueError``), which ``pricing`` prints as
``pricing: error: ...`` with exit code 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from pricing.config import registry_dir
from pricing_udfs.model.registry import LATEST, Manifest, Registry, RegistryError

if TYPE_CHECKING:
    from pricing.config import Settings

_SHOWN_METRICS = ("log_loss", "auc")



def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``models list|show|promote|rollback`` to the ``pricing`` command."""
    models = subparsers.add_parser(
        "models",
        help="the model registry: list, show, promote, roll back versions",
        description="Immutable model versions and the 'latest' pointer the job serves.",
    )
    sub = models.add_subparsers(title="actions", dest="models_action", metavar="ACTION", required=True)

    ls = sub.add_parser("list", help="every version, oldest first; '*' marks latest")
    _registry_arg(ls)
    ls.set_defaults(func=_guarded(_list))

    show = sub.add_parser("show", help="one version's manifest (metrics, training window, parent) and the latest "
                          "gate decision about it")
    show.add_argument("version", metavar="VERSION", help="a version id, or 'latest'")
    show.add_argument("--json", action="store_true",
                      help="print the manifest as JSON (with 'gate': the latest gate decision, when one was recorded)")
    _registry_arg(show)
    show.set_defaults(func=_guarded(_show))

    promote = sub.add_parser("promote", help="make VERSION the one 'latest' names (atomically)")
    promote.add_argument("version", metavar="VERSION", help="a version id (see 'pricing models list')")
    _registry_arg(promote)
    promote.set_defaults(func=_guarded(_promote))

    rollback = sub.add_parser("rollback", help="point 'latest' back at the previously promoted version")
    _registry_arg(rollback)
    rollback.set_defaults(func=_guarded(_rollback))


def _registry_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--registry", type=Path, default=None, metavar="DIR",
        help="registry folder (default: [models] registry_dir, else <state_dir>/models)",
    )


def _guarded(handler: Callable[[argparse.Namespace, Registry], int]) -> Callable[[argparse.Namespace, "Settings"], int]:
    @functools.wraps(handler)
    def run(args: argparse.Namespace, settings: "Settings") -> int:
        registry = Registry(args.registry or registry_dir(settings))
        try:
            return handler(args, registry)
        except RegistryError:
            raise
        except OSError as exc:  # a read-only mount, no permission, ...
            raise RegistryError(f"registry {registry.root}: {exc}") from exc

    return run


def _list(args: argparse.Namespace, registry: Registry) -> int:
    versions = registry.versions()
    if not versions:
        print(f"no model versions in {registry.root} (publish one with 'pricing train')", file=sys.stderr)
        return 0
    latest = registry.latest_version()
    rows = [("", "VERSION", "CREATED", "FEATURES", *(m.upper() for m in _SHOWN_METRICS), "PARENT")]
    for version in versions:
        mark = "*" if version == latest else ""
        try:
            m = registry.manifest(version)
        except RegistryError as exc:
            rows.append((mark, version, f"(unreadable manifest: {exc})", "", *("" for _ in _SHOWN_METRICS), ""))
            continue
        metrics = (f"{m.metrics[k]:.4f}" if k in m.metrics else "-" for k in _SHOWN_METRICS)
        rows.append((mark, version, m.created, m.feature_spec_version, *metrics, m.parent or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    print(f"latest: {latest}" if latest else "latest: none promoted yet ('pricing models promote VERSION')")
    return 0


def _show(args: argparse.Namespace, registry: Registry) -> int:
    manifest = registry.manifest(args.version)
    gates = registry.evaluations(manifest.version)
    if args.json:
        shown = manifest.to_dict()
        if gates:
            shown["gate"] = {"at": gates[-1]["at"], **gates[-1]["decision"]}
        sys.stdout.write(json.dumps(shown, indent=2, sort_keys=True, allow_nan=False) + "\n")
        return 0
    print(_describe(manifest, registry))
    if gates:
        print("\n".join(describe_gate(gates[-1]["decision"], at=gates[-1]["at"], earlier=len(gates) - 1)))
    return 0


def describe_gate(decision: dict, *, at: str | None = None, earlier: int = 0) -> list[str]:
    """A recorded gate decision (``pricing.learn.gate.GateDecision.to_dict()``) as text lines: the verdict, why,
    and each policy's off-policy values (95 % intervals), effective rows, log-loss and calibration error."""
    champion = decision.get("champion") or None
    holdout = decision.get("holdout", {})
    verdict = "promoted" if decision.get("promote") else "refused"
    against = f"against {champion['version']}" if champion else "with no champion"
    when = f" at {at}" if at else ""
    more = f"; {earlier} earlier decision(s) in history.jsonl" if earlier else ""
    out = [f"gate:            {verdict}{when} {against}, on {holdout.get('rows_used', 0):,} holdout rows{more}"]
    out += [f"  - {reason}" for reason in decision.get("reasons", [])]

    def interval(e: dict | None) -> str:
        if not e or e.get("value") is None:
            return "-"
        lo, hi = e.get("low"), e.get("high")
        return f"{e['value']:.2f} [{'-inf' if lo is None else f'{lo:.2f}'}, {'inf' if hi is None else f'{hi:.2f}'}]"

    def number(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    out.append(f"  {'policy':<11} {'SNIPS (95%)':<26} {'DR (95%)':<26} {'ESS':>7} {'log-loss':>9} {'ECE':>7}")
    for role, fig in (("challenger", decision.get("challenger")), ("champion", champion)):
        if fig:
            ess = (fig.get("snips") or {}).get("effective_n")
            out.append(f"  {role:<11} {interval(fig.get('snips')):<26} {interval(fig.get('dr')):<26} "
                       f"{number(ess, '7.1f'):>7} {number(fig.get('log_loss'), '9.4f'):>9} "
                       f"{number(fig.get('calibration_error'), '7.4f'):>7}")
    if holdout.get("logged_value") is not None:
        out.append(f"  {'logged':<11} {holdout['logged_value']:.2f} (mean profit per request served, minor units)")
    return out


def _describe(m: Manifest, registry: Registry) -> str:
    w = m.training_window
    lines = [
        ("version", m.version + ("  (latest)" if m.version == registry.latest_version() else "")),
        ("created", m.created),
        ("feature spec", m.feature_spec_version),
        ("training window", f"{_ms(w.start_ms)} .. {_ms(w.end_ms)}  ({w.start_ms} .. {w.end_ms} ms)"),
        ("parent", m.parent or "-"),
        ("content hash", m.content_hash),
        ("model", str(registry.model_dir(m.version))),
    ]
    out = [f"{k:<16} {v}" for k, v in lines]
    out.append("metrics:" if m.metrics else "metrics:        none")
    out += [f"  {k:<22} {v:.6g}" for k, v in sorted(m.metrics.items())]
    out += _describe_trust_region(m)
    if m.extra:
        out.append("extra:")
        out += [f"  {k:<22} {json.dumps(v)}" for k, v in sorted(m.extra.items())]
    return "\n".join(out)


def _describe_trust_region(m: Manifest) -> list[str]:
    """The trust region's feature ranges and traffic quantiles, as a table."""
    region = m.trust_region
    if region is None:
        return [f"trust region:   none (manifest version {m.manifest_version}); the model prices without one"]
    lo_q, hi_q = region.quantiles
    out = [f"trust region:   {region.rows:,} training rows ({region.feature_spec_version}); each feature's "
           f"{_pct(lo_q)} to {_pct(hi_q)} quantiles of its values other than its default (the default included "
           "where training rows held it)",  # fmt: skip
           f"  {'feature':<28} {'low':>12} {'high':>12}"]
    out += [f"  {name:<28} {region.features[name][0]:>12.6g} {region.features[name][1]:>12.6g}"
            for name in _spec_order(region.features)]  # fmt: skip
    if region.traffic:
        out.append("traffic:        quantiles of each window over the training rows")
        out.append(f"  {'window':<28} " + " ".join(f"{_pct(q):>7}" for q in region.traffic_levels))
        out += [f"  {name:<28} " + " ".join(f"{v:>7.4g}" for v in region.traffic[name])
                for name in _spec_order(region.traffic)]  # fmt: skip
    return out


def _spec_order(names: Iterable[str]) -> list[str]:
    """The feature spec's order (the manifest's JSON is sorted by name); names it lacks last."""
    from pricing_udfs.features import FEATURE_SPEC

    rank = {name: i for i, name in enumerate(FEATURE_SPEC.names)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def _pct(q: float) -> str:
    return f"{q * 100:g}%"


def _ms(epoch_ms: int) -> str:
    return dt.datetime.fromtimestamp(epoch_ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _promote(args: argparse.Namespace, registry: Registry) -> int:
    if args.version == LATEST:
        raise RegistryError("promote takes a version id, not 'latest' (see 'pricing models list')")
    change = registry.promote(args.version)
    if change.previous == change.latest:
        print(f"{change.latest} is already latest")
    else:
        print(f"latest: {change.previous or 'none'} -> {change.latest}")
    return 0


def _rollback(args: argparse.Namespace, registry: Registry) -> int:
    change = registry.rollback()
    print(f"rolled back latest: {change.previous} -> {change.latest}")
    return 0
