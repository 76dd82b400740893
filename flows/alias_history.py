"""Alias history: every move of `champion`/`challenger`, kept in the MLflow registry itself.

Usage: `record(name, "champion", old, new, reason, kind)` from flows/registry.py;
`gruflow history` prints it. MLflow keeps no history of aliases, so each change is appended as
one registered-model tag `alias_history.NNNNNN` holding a JSON event (time, alias, old and new
version, kind, reason, user). One tag per event: appending never rewrites (or truncates) earlier
events, and no single tag value grows with the registry's age.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

PREFIX = "alias_history."
KINDS = ("gate", "promote", "rollback")


def events(name: str) -> list[dict]:
    """The model's alias changes, oldest first ([] for a model without history)."""
    try:
        tags = MlflowClient().get_registered_model(name).tags
    except MlflowException:
        return []
    return [json.loads(tags[k]) for k in sorted(tags) if k.startswith(PREFIX)]


def record(name: str, alias: str, old: str | None, new: str, reason: str, kind: str) -> dict:
    """Append one alias change to the model's history; returns the event."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    event = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "alias": alias,
        "old": old,
        "new": str(new),
        "kind": kind,
        "reason": reason,
        "by": getpass.getuser(),
    }
    n = len(events(name)) + 1
    MlflowClient().set_registered_model_tag(name, f"{PREFIX}{n:06d}", json.dumps(event))
    return event


def champion_stack(history: list[dict]) -> list[str]:
    """Champions in the order they took over, with rolled-back ones removed: the last is the
    current champion, the one before it is where `rollback` goes."""
    stack: list[str] = []
    for e in history:
        if e["alias"] != "champion":
            continue
        if e["kind"] == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != e["new"]:  # history began mid-way: trust the event
                stack.append(e["new"])
        elif not stack or stack[-1] != e["new"]:
            stack.append(e["new"])
    return stack


def rollback_target(name: str, current: str) -> str | None:
    """The version `rollback` gives the champion alias back to, from the history; None when
    the history does not say (no earlier champion, or a registry older than the history)."""
    stack = champion_stack(events(name))
    if len(stack) >= 2 and stack[-1] == current:
        return stack[-2]
    return None


def champion_periods(history: list[dict]) -> list[tuple[str, str, str | None, str]]:
    """(version, from, until or None = still champion, how it became champion)."""
    periods: list[tuple[str, str, str | None, str]] = []
    for e in history:
        if e["alias"] != "champion":
            continue
        if periods and periods[-1][2] is None:
            version, start, _, how = periods[-1]
            periods[-1] = (version, start, e["time"], how)
        periods.append((e["new"], e["time"], None, f"{e['kind']}: {e['reason']}"))
    return periods


def render(name: str, history: list[dict]) -> str:
    """`gruflow history`: who was champion when, then every alias change."""
    if not history:
        return f"{name}: no alias changes recorded yet"
    lines = [f"{name}: champion periods", f"{'version':>8}  {'from':25}  {'until':25}  how"]
    for version, start, until, how in champion_periods(history):
        lines.append(f"{version:>8}  {start:25}  {until or '(now)':25}  {how}")
    lines += [
        "",
        f"{name}: alias changes",
        f"{'time':25}  {'alias':10}  {'old':>5} -> {'new':<5}  {'kind':8}  reason",
    ]
    for e in history:
        lines.append(
            f"{e['time']:25}  {e['alias']:10}  {e['old'] or '-':>5} -> {e['new']:<5}  "
            f"{e['kind']:8}  {e['reason']} ({e['by']})"
        )
    return "\n".join(lines)
