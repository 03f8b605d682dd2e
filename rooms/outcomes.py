"""Wrap-up outcome codes: every ticket that reached a clerk ends with exactly one."""

from __future__ import annotations

from enum import StrEnum

from rooms.errors import ValidationError


class Outcome(StrEnum):
    RESOLVED = "resolved"  # consultation answered
    PRE_REVIEW_PASSED = "pre_review_passed"  # materials complete, may apply
    PRE_REVIEW_CORRECTIONS = "pre_review_corrections"  # told exactly what to fix or bring
    REFERRED_OFFLINE = "referred_offline"  # must visit a physical window
    TRANSFERRED = "transferred"  # handed to another matter or clerk (set by transfer)
    CALLBACK_NO_ANSWER = "callback_no_answer"  # resident not reached on callback
    TECHNICAL_PROBLEM = "technical_problem"  # audio/video failure ended the session
    UNRESOLVED = "unresolved"  # could not be completed (办不成事): reason required
    NOT_RECORDED = "not_recorded"  # clerk disconnected before recording (set by the hall)


# Outcomes a clerk may choose; the others are set by the hall itself.
CLERK_OUTCOMES = frozenset(Outcome) - {Outcome.TRANSFERRED, Outcome.NOT_RECORDED}
REASON_REQUIRED = frozenset({Outcome.UNRESOLVED, Outcome.REFERRED_OFFLINE})
MAX_REASON_LENGTH = 500


def parse_outcome(code: str, reason: str | None) -> tuple[Outcome, str | None]:
    """Validate a clerk's outcome code and reason; raise ValidationError naming the problem."""
    try:
        outcome = Outcome(code)
    except ValueError:
        allowed = ", ".join(sorted(CLERK_OUTCOMES))
        raise ValidationError(f'unknown outcome "{code}"; expected one of: {allowed}') from None
    if outcome not in CLERK_OUTCOMES:
        raise ValidationError(f'outcome "{code}" is set by the hall, not by a clerk')
    text = (reason or "").strip() or None
    if outcome in REASON_REQUIRED and text is None:
        raise ValidationError(f'outcome "{code}" needs a reason')
    if text is not None and len(text) > MAX_REASON_LENGTH:
        raise ValidationError(f"outcome reason is longer than {MAX_REASON_LENGTH} characters")
    return outcome, text
