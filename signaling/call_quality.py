"""The call funnel and call quality of a session, as its two sides report them (``call.report``,
docs/protocol.md).

Each side (the resident's app or kiosk, and the clerk) reports when its call reached a stage
(signaling, ICE connected, first frame), a technical failure, and every few seconds a summary
of its WebRTC statistics. The hub keeps one small running summary per side of a live session
in the shared hub state (so it does not matter which process holds which socket) and, when the
session ends, logs it as ONE ``call_quality`` event (docs/queueing.md): a session whose call
failed shows a failure code; one where a stage is missing without a failure is a call somebody
left before it was up (a resident who gave up, not a technical failure).

The summary is plain JSON (what the Redis state stores), updated here by pure functions: the
hub reads a side's summary, :func:`apply` the report, writes it back. Sums and counts are kept
so the event can carry means without keeping samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

# The funnel in order (metrics and the event use these names).
STAGES = ("signaling", "ice_connected", "first_frame")
SIDES = ("resident", "clerk")

Summary = dict[str, Any]  # one side's running summary (JSON)

# Running figures of the stats samples: kept as n/sum/min/max; the event shows mean and the
# extreme that matters (the worst: max for rtt, loss and jitter, min for the bitrate).
_FIGURES = ("rtt_ms", "loss_ratio", "jitter_ms", "bitrate_kbps")
_WORST = {"rtt_ms": "max", "loss_ratio": "max", "jitter_ms": "max", "bitrate_kbps": "min"}
# Counters a client reports as totals since its connection opened: the summary keeps the
# largest seen (a fresh RTCPeerConnection after a resume starts again from 0).
_TOTALS = ("freezes", "frames_decoded")


class CallObserver(Protocol):
    """What the hub tells about calls (server/metrics.py counts it); every method is cheap
    and must not raise."""

    def call_reached(self, stage: str, seconds: float) -> None:
        """The session's call reached ``stage`` (first side to report it), ``seconds``
        after the clerk's accept."""

    def call_failed(self, stage: str) -> None:
        """The session's call failed before ``stage`` (first failure reported for it)."""

    def call_stats(self, stats: Mapping[str, Any], *, first: bool, freezes: int) -> None:
        """One side's stats sample; ``first``: that side had no candidate type yet in this
        session; ``freezes``: video freezes since its previous sample."""


def empty(role: str) -> Summary:
    return {"role": role, "reports": 0, "stages": {}, "failure": None, "samples": 0,
            "candidate_type": None}


def first_missing(summary: Mapping[str, Any]) -> str | None:
    """The first stage of the funnel this side has not reached (None: all reached)."""
    reached = summary.get("stages") or {}
    return next((s for s in STAGES if s not in reached), None)


def apply(summary: Summary, *, stage: str | None, at_ms: int, failure: str | None,
          stats: Mapping[str, Any] | None) -> tuple[Summary, str | None, str | None]:
    """``summary`` with one report applied (a new dict). Returns it with the stage newly
    reached by this side (None if none or already reached) and the stage a newly reported
    failure happened before (None if no new failure: a side's first failure is kept)."""
    out: Summary = {**summary, "stages": dict(summary.get("stages") or {})}
    out["reports"] = int(out.get("reports", 0)) + 1
    reached: str | None = None
    failed_before: str | None = None
    if stage in STAGES and stage not in out["stages"]:
        out["stages"][stage] = at_ms
        reached = stage
    elif stage == "failed" and out.get("failure") is None:
        failed_before = first_missing(out) or STAGES[-1]
        out["failure"] = {"code": failure, "before": failed_before, "at_ms": at_ms}
    if stats is not None:
        out["samples"] = int(out.get("samples", 0)) + 1
        if stats.get("candidate_type") is not None:
            out["candidate_type"] = stats["candidate_type"]
        for name in _FIGURES:
            value = stats.get(name)
            if value is None:
                continue
            old = out.get(name) or {"n": 0, "sum": 0.0, "min": value, "max": value}
            out[name] = {"n": old["n"] + 1, "sum": old["sum"] + float(value),
                         "min": min(old["min"], value), "max": max(old["max"], value)}
        for name in _TOTALS:
            value = stats.get(name)
            if value is not None:
                out[name] = max(int(out.get(name) or 0), int(value))
    return out, reached, failed_before


def side_row(summary: Mapping[str, Any]) -> dict[str, Any]:
    """One side of the ``call_quality`` event (docs/queueing.md): what reports can read."""
    row: dict[str, Any] = {
        "role": summary.get("role"),
        "reports": summary.get("reports", 0),
        "stages": dict(summary.get("stages") or {}),
        "failure": summary.get("failure"),
        "samples": summary.get("samples", 0),
        "candidate_type": summary.get("candidate_type"),
    }
    for name in _FIGURES:
        figure = summary.get(name)
        if figure and figure.get("n"):
            worst = _WORST[name]
            row[name] = {"mean": round(figure["sum"] / figure["n"], 4),
                         worst: round(figure[worst], 4)}
    for name in _TOTALS:
        if summary.get(name) is not None:
            row[name] = summary[name]
    return row


def event_data(sides: Mapping[str, Summary]) -> dict[str, Any]:
    """The ``call_quality`` event's data: per side (``resident``, ``clerk``; a side that
    never reported is None) and the verdict: ``failed`` (some side reported a technical
    failure), ``connected`` (some side saw the peer's first frame) or ``incomplete``
    (neither: the call was left before it was up)."""
    rows = {side: side_row(sides[side]) if side in sides else None for side in SIDES}
    failed = any(r is not None and r["failure"] is not None for r in rows.values())
    framed = any(r is not None and "first_frame" in r["stages"] for r in rows.values())
    outcome = "failed" if failed else "connected" if framed else "incomplete"
    return {"outcome": outcome, **rows}
