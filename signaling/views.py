"""How domain objects look on the wire (docs/protocol.md, "Objects")."""

from __future__ import annotations

from typing import Any

from rooms.clerks import Clerk
from rooms.queues import PositionInfo
from rooms.tickets import Ticket


def ticket_view(ticket: Ticket) -> dict[str, Any]:
    return {
        "id": ticket.id,
        "number": ticket.number,
        "matter_id": ticket.matter_id,
        "department_id": ticket.department_id,
        "kind": ticket.kind.value,
        "channel": ticket.channel.value,
        "state": ticket.state.value,
        "priority": ticket.priority.value if ticket.priority else None,
        "callback": ticket.callback_contact is not None,
        "joined_at": ticket.joined_at,
        "position": ticket.published_position if ticket.is_queued or ticket.state.value
        == "offered" else None,
        "clerk_id": ticket.clerk_id,
        "transfers": ticket.transfers,
        "outcome": ticket.outcome,
        "rating": ticket.rating,
    }


def offer_view(ticket: Ticket, now: float, timeout_s: float) -> dict[str, Any]:
    """An offer as ``offer.new`` carries it; the clerk's welcome repeats it after a reload."""
    return {
        "ticket_id": ticket.id,
        "number": ticket.number,
        "matter_id": ticket.matter_id,
        "kind": ticket.kind.value,
        "priority": ticket.priority.value if ticket.priority else None,
        "callback": ticket.callback_contact is not None,
        # The clerk phones a callback ticket: the number is for them (never for other
        # residents, and not in the event log).
        "callback_contact": ticket.callback_contact,
        "transfers": ticket.transfers,
        # What the transferring clerk wrote for the receiving one (null if never moved).
        "transfer_note": ticket.transfer_note,
        "wait_s": now - ticket.joined_at,
        "deadline": ticket.offer_deadline,
        "timeout_s": timeout_s,
    }


def position_view(info: PositionInfo) -> dict[str, Any]:
    return {"ticket_id": info.ticket_id, "position": info.position, "eta_s": info.eta_s,
            "staffed": info.staffed}


def clerk_view(clerk: Clerk) -> dict[str, Any]:
    return {
        "id": clerk.id,
        "name": clerk.name,
        "state": clerk.state.value,
        "break_reason": clerk.break_reason,
        "ticket_id": clerk.ticket_id,
        "missed_in_row": clerk.missed_in_row,
        "wrapup_deadline": clerk.wrapup_deadline,
        "wrapup_overdue": clerk.wrapup_overdue,
        "pending_break": clerk.pending_break,
    }
