"""The wire protocol's client→server payloads, as strict schemas (see docs/protocol.md).

Every event a client may send is in :data:`EVENTS` with the schema of its payload and the roles
allowed to send it. Schemas forbid unknown fields and coerce nothing (a number sent as a string
is refused), so what passes validation is exactly what the contract allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic import ValidationError as PydanticValidationError

from rooms.cases import CaseState
from rooms.errors import HallError
from rooms.hall import MAX_NOTE_CHARS
from signaling.identity import Role

MAX_EVENT_BYTES = 64 * 1024
# Deepest nesting of lists/objects in a frame (the event list counts as one level): the
# protocol's deepest payload has 4; orjson cannot even encode past 254 again.
MAX_DEPTH = 32

Id = Annotated[str, StringConstraints(min_length=1, max_length=64)]
ShortText = Annotated[str, StringConstraints(max_length=500)]


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Hello(Payload):
    token: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None
    id_token: Annotated[str, StringConstraints(min_length=1, max_length=8192)] | None = None
    resume: Annotated[str, StringConstraints(min_length=16, max_length=128)] | None = None
    last_seq: Annotated[int, Field(ge=0)] = 0


class Empty(Payload):
    pass


class TicketTake(Payload):
    matter_id: Id
    kind: Literal["consultation", "pre_review"] = "consultation"
    priority: Literal["elderly", "disabled"] | None = None
    when_unstaffed: Literal["refuse", "wait", "callback"] = "refuse"
    callback_contact: Annotated[str, StringConstraints(max_length=100)] | None = None


class TicketRef(Payload):
    ticket_id: Id


class TicketCallback(Payload):
    ticket_id: Id
    contact: Annotated[str, StringConstraints(min_length=1, max_length=100)]


class BreakRequest(Payload):
    reason: Annotated[str, StringConstraints(min_length=1, max_length=100)]


class SessionRef(Payload):
    session_id: Id


class Transfer(Payload):
    session_id: Id
    to_matter: Id | None = None
    to_clerk: Id | None = None
    allow_wait: bool = False
    note: ShortText | None = None


class WrapupOutcome(Payload):
    outcome: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    reason: ShortText | None = None


class WrapupFinish(Payload):
    outcome: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    reason: ShortText | None = None


class WrapupExtend(Payload):
    seconds: Annotated[float, Field(ge=1, le=600, strict=False)]


class Description(Payload):
    type: Literal["offer", "answer", "rollback"]
    sdp: Annotated[str, StringConstraints(max_length=60_000)] = ""


class Candidate(BaseModel):
    """RTCIceCandidateInit as browsers serialise it (camelCase on purpose)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    candidate: Annotated[str, StringConstraints(max_length=2048)]
    sdpMid: Annotated[str, StringConstraints(max_length=64)] | None = None
    sdpMLineIndex: Annotated[int, Field(ge=0, le=1024)] | None = None
    usernameFragment: Annotated[str, StringConstraints(max_length=256)] | None = None


class RtcSignal(Payload):
    session_id: Id
    to: Annotated[str, StringConstraints(min_length=1, max_length=128)] = "peer"
    description: Description | None = None
    candidate: Candidate | None = None  # explicit null = end of candidates


MAX_CHAT_CHARS = 1000


class ChatSend(Payload):
    session_id: Id
    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                           max_length=MAX_CHAT_CHARS)]


class SessionNote(Payload):
    session_id: Id
    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                           max_length=MAX_NOTE_CHARS)]


DeviceState = Literal["ok", "failed", "absent"]


class KioskHealth(Payload):
    camera: DeviceState
    microphone: DeviceState
    speaker: DeviceState
    document_camera: DeviceState
    detail: Annotated[str, StringConstraints(max_length=300)] | None = None
    agent: Annotated[str, StringConstraints(max_length=64)] | None = None


class SessionRate(Payload):
    ticket_id: Id
    score: Annotated[int, Field(ge=1, le=5)]
    comment: ShortText | None = None


class PrereviewMark(Payload):
    session_id: Id
    material_id: Id
    mark: Literal["pending", "received", "acceptable", "needs_correction", "missing"]
    note: Annotated[str, StringConstraints(max_length=300)] | None = None
    file_ids: Annotated[list[Id], Field(max_length=20)] | None = None


class CaseFile(Payload):
    matter_id: Id
    description: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                                  max_length=1000)]
    ticket_id: Id | None = None  # filed from the end of this session


class CaseLookup(Payload):
    claim_code: Annotated[str, StringConstraints(min_length=4, max_length=32)]


class CaseAct(Payload):
    case_id: Id
    action: Literal["assign", "start", "resolve", "confirm", "reopen"]
    to: Id | None = None
    note: ShortText | None = None


CaseStateName = Literal["open", "assigned", "in_progress", "resolved", "closed", "reopened"]
# Strict schemas take no enum coercion: the literal must list exactly the case states.
assert set(get_args(CaseStateName)) == {s.value for s in CaseState}


class CaseList(Payload):
    state: CaseStateName | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 200


class MediaScreen(Payload):
    session_id: Id
    active: bool
    stream_id: Annotated[str, StringConstraints(max_length=128)] | None = None


# call.report (docs/protocol.md): the call funnel and quality figures of one side. Every number
# is bounded (no NaN or infinity: strict floats refuse them), so a client can neither skew the
# histograms nor grow the summary.
MAX_CALL_AT_MS = 3_600_000  # a stage reached an hour after the accept is not a measurement
CallStage = Literal["signaling", "ice_connected", "first_frame", "failed"]
CallFailure = Literal["signaling_failed", "ice_failed", "no_frames", "media_denied", "timeout"]


def _bounded(low: float, high: float) -> Any:
    return Field(ge=low, le=high, allow_inf_nan=False)


class CallStats(Payload):
    candidate_type: Literal["host", "srflx", "prflx", "relay"] | None = None
    rtt_ms: Annotated[float, _bounded(0, 60_000)] | None = None
    loss_ratio: Annotated[float, _bounded(0, 1)] | None = None
    jitter_ms: Annotated[float, _bounded(0, 60_000)] | None = None
    bitrate_kbps: Annotated[float, _bounded(0, 1_000_000)] | None = None
    freezes: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    frames_decoded: Annotated[int, Field(ge=0, le=1_000_000_000)] | None = None


class CallReport(Payload):
    session_id: Id
    stage: CallStage | None = None
    at_ms: Annotated[int, Field(ge=0, le=MAX_CALL_AT_MS)] | None = None
    failure: CallFailure | None = None
    stats: CallStats | None = None

    @model_validator(mode="after")
    def _consistent(self) -> CallReport:
        if self.stage is None and self.stats is None:
            raise ValueError("a call.report carries a stage, stats or both")
        if (self.stage == "failed") != (self.failure is not None):
            raise ValueError('a failure code goes with stage "failed", and only with it')
        return self


RESIDENTS = frozenset({Role.RESIDENT, Role.KIOSK})
CLERKS = frozenset({Role.CLERK})
SUPERVISORS = frozenset({Role.SUPERVISOR})
STAFF_AND_KIOSKS = frozenset({Role.CLERK, Role.SUPERVISOR, Role.KIOSK})
IN_SESSION = frozenset({Role.RESIDENT, Role.KIOSK, Role.CLERK})
ANY = frozenset(Role)


@dataclass(frozen=True, slots=True)
class EventSpec:
    schema: type[Payload]
    roles: frozenset[Role]


EVENTS: dict[str, EventSpec] = {
    "auth.refresh": EventSpec(Empty, STAFF_AND_KIOSKS),
    "ticket.take": EventSpec(TicketTake, RESIDENTS),
    "ticket.leave": EventSpec(TicketRef, RESIDENTS),
    "ticket.callback": EventSpec(TicketCallback, RESIDENTS),
    "ticket.position": EventSpec(TicketRef, RESIDENTS),
    "clerk.available": EventSpec(Empty, CLERKS),
    "clerk.break": EventSpec(BreakRequest, CLERKS),
    "clerk.logout": EventSpec(Empty, CLERKS),
    "offer.accept": EventSpec(TicketRef, CLERKS),
    "offer.decline": EventSpec(TicketRef, CLERKS),
    "session.end": EventSpec(SessionRef, IN_SESSION),
    "session.transfer": EventSpec(Transfer, CLERKS),
    "wrapup.outcome": EventSpec(WrapupOutcome, CLERKS),
    "wrapup.finish": EventSpec(WrapupFinish, CLERKS),
    "wrapup.extend": EventSpec(WrapupExtend, CLERKS),
    "rtc.signal": EventSpec(RtcSignal, frozenset({*IN_SESSION, Role.SUPERVISOR})),
    "media.screen": EventSpec(MediaScreen, IN_SESSION),
    "call.report": EventSpec(CallReport, IN_SESSION),
    "chat.send": EventSpec(ChatSend, IN_SESSION),
    "session.note": EventSpec(SessionNote, CLERKS),
    "kiosk.health": EventSpec(KioskHealth, frozenset({Role.KIOSK})),
    "session.rate": EventSpec(SessionRate, RESIDENTS),
    "case.file": EventSpec(CaseFile, RESIDENTS),
    "case.mine": EventSpec(Empty, frozenset({Role.RESIDENT})),
    "case.lookup": EventSpec(CaseLookup, RESIDENTS),
    "case.act": EventSpec(CaseAct, frozenset({Role.RESIDENT, Role.CLERK, Role.SUPERVISOR})),
    "case.overdue": EventSpec(Empty, SUPERVISORS),
    "case.list": EventSpec(CaseList, SUPERVISORS),
    "prereview.start": EventSpec(SessionRef, CLERKS),
    "prereview.mark": EventSpec(PrereviewMark, CLERKS),
    "prereview.finish": EventSpec(SessionRef, CLERKS),
    "monitor.join": EventSpec(SessionRef, SUPERVISORS),
    "monitor.leave": EventSpec(SessionRef, SUPERVISORS),
    "wall.snapshot": EventSpec(Empty, SUPERVISORS),
}


class ProtocolError(HallError):
    """A malformed, oversized or unknown event (never reaches the domain core)."""

    code = "invalid_payload"


P = TypeVar("P", bound=Payload)


def parse(schema: type[P], data: Any) -> P:
    """Validate a payload; the error names the first bad field."""
    if not isinstance(data, dict):
        raise ProtocolError("the payload must be a JSON object")
    try:
        return schema.model_validate(data)
    except PydanticValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        raise ProtocolError(f"{where}: {first['msg']}") from None


def ok(**fields: Any) -> dict[str, Any]:
    return {"ok": True, **fields}


def fail(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message, **extra}}
