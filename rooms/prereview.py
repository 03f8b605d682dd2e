"""Pre-review (材料预审): the clerk works through a matter's material checklist.

A :class:`PreReview` belongs to one ticket (session) and one matter. It holds one
:class:`ChecklistItem` per material of the matter, in catalog order, each starting as
``pending``. The clerk marks every item; :meth:`PreReview.finish` computes the result and
freezes the review. :meth:`PreReview.corrections` is the resident's correction list (补正清单),
in plain Chinese; :func:`correction_text` is the same list as plain text for SMS and kiosk
receipt printers, and ``web/templates/correction_list.html`` the printable page
(:func:`template_context` builds its context).

Pure domain code: no I/O. :meth:`PreReview.to_dict` / :meth:`PreReview.from_dict` are the
JSON-safe form stored in the records database.

Rules
-----
Marks (:class:`MaterialMark`):

* ``pending``: not looked at yet (the initial mark; re-marking ``pending`` undoes a mark);
* ``received``: the resident showed it, the clerk has not judged it yet. For a REQUIRED
  material this counts as ``pending``: :meth:`PreReview.finish` is refused until it is judged;
* ``acceptable``: fine as it is;
* ``needs_correction``: submitted but must be fixed. A note saying WHAT to fix is required
  (it is the text the resident reads);
* ``missing``: not submitted. A note is optional (e.g. "原件").

Notes are stripped, at most :data:`MAX_NOTE_CHARS` (300) characters, an empty note is none.
At most :data:`MAX_FILE_IDS` (20) distinct file ids may be linked to one item. ``mark`` always
replaces the note (``note=None`` clears it); ``file_ids=None`` keeps the linked files, a list
replaces them (``[]`` unlinks all).

Result of :meth:`PreReview.finish` (refused while a required item is ``pending`` or
``received``):

1. any REQUIRED item ``missing`` → ``not_passed`` (未通过);
2. otherwise any item ``needs_correction`` → ``passed_with_corrections`` (需补正). An OPTIONAL
   material that was submitted but needs fixing counts too: the resident has to fix it;
3. otherwise → ``passed`` (通过). Optional items may be ``missing``, ``pending`` or
   ``received``: they are not needed.

Correction list: one entry per item in catalog order that is ``needs_correction`` (action
``fix``, any material) or ``missing`` and REQUIRED (action ``bring``); a missing optional
material is not asked for. So the list is empty exactly when the result is ``passed``.

:attr:`PreReview.first_pass` (一次通过, for reports) is true for a finished review whose result
is ``passed``, i.e. passed with nothing to correct.
"""

from __future__ import annotations

import datetime
import math
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal
from zoneinfo import ZoneInfo

from rooms.catalog import Matter
from rooms.errors import InvalidStateError, NotFoundError, ValidationError

__all__ = [
    "FORMAT_VERSION",
    "MARK_LABELS_ZH",
    "MAX_FILE_IDS",
    "MAX_NOTE_CHARS",
    "RECEIPT_WIDTH",
    "RESULT_LABELS_ZH",
    "ChecklistItem",
    "Correction",
    "MaterialMark",
    "PreReview",
    "PreReviewResult",
    "correction_text",
    "template_context",
    "wrap_text",
]

MAX_NOTE_CHARS = 300
MAX_FILE_IDS = 20
#: Characters per line of :func:`correction_text` (receipt printers, SMS).
RECEIPT_WIDTH = 40
#: Version of the :meth:`PreReview.to_dict` format.
FORMAT_VERSION = 1


class MaterialMark(StrEnum):
    PENDING = "pending"  # 待审
    RECEIVED = "received"  # 已收到（未判定）
    ACCEPTABLE = "acceptable"  # 合格
    NEEDS_CORRECTION = "needs_correction"  # 需补正
    MISSING = "missing"  # 缺少


class PreReviewResult(StrEnum):
    PASSED = "passed"  # 通过
    PASSED_WITH_CORRECTIONS = "passed_with_corrections"  # 需补正
    NOT_PASSED = "not_passed"  # 未通过


MARK_LABELS_ZH: dict[MaterialMark, str] = {
    MaterialMark.PENDING: "待审",
    MaterialMark.RECEIVED: "已收到",
    MaterialMark.ACCEPTABLE: "合格",
    MaterialMark.NEEDS_CORRECTION: "需补正",
    MaterialMark.MISSING: "缺少",
}

RESULT_LABELS_ZH: dict[PreReviewResult, str] = {
    PreReviewResult.PASSED: "通过",
    PreReviewResult.PASSED_WITH_CORRECTIONS: "需补正",
    PreReviewResult.NOT_PASSED: "未通过",
}

# Required items in these marks block finish().
_UNJUDGED = frozenset({MaterialMark.PENDING, MaterialMark.RECEIVED})


@dataclass(slots=True)
class ChecklistItem:
    """One material of the checklist and the clerk's mark for it."""

    material_id: str
    name: str
    required: bool
    mark: MaterialMark = MaterialMark.PENDING
    note: str | None = None
    file_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "material_id": self.material_id,
            "name": self.name,
            "required": self.required,
            "mark": self.mark.value,
            "note": self.note,
            "file_ids": list(self.file_ids),
        }

    @classmethod
    def from_dict(cls, raw: Any) -> ChecklistItem:
        if not isinstance(raw, dict):
            raise ValidationError(f"checklist item must be an object, not {raw!r}")
        material_id = _str_field(raw, "material_id")
        name = _str_field(raw, "name")
        required = raw.get("required")
        if not isinstance(required, bool):
            raise ValidationError(f'checklist item "{material_id}": "required" must be a bool')
        mark = _parse_mark(raw.get("mark"), material_id)
        note = _clean_note(raw.get("note"), material_id)
        file_ids = _clean_file_ids(raw.get("file_ids", []), material_id)
        _check_note_rule(mark, note, material_id)
        return cls(material_id, name, required, mark, note, file_ids)


@dataclass(frozen=True, slots=True)
class Correction:
    """One line of the resident's correction list (补正清单)."""

    material_id: str
    name: str
    action: Literal["bring", "fix"]  # bring: 补充提交 (missing); fix: 更正 (needs correction)
    text_zh: str  # plain Chinese, e.g. "请补充提交：居民身份证"


class PreReview:
    """The pre-review of one ticket's matter; see the module docstring for the rules."""

    __slots__ = (
        "clerk_id",
        "created_at",
        "finished_at",
        "items",
        "matter_id",
        "matter_name",
        "result",
        "ticket_id",
        "updated_at",
    )

    def __init__(
        self,
        ticket_id: str,
        matter: Matter,
        clerk_id: str,
        now: float,
    ) -> None:
        if not matter.materials:
            raise ValidationError(
                f'matter "{matter.id}" has no material checklist, so it cannot be pre-reviewed'
            )
        self.ticket_id = ticket_id
        self.matter_id = matter.id
        self.matter_name = matter.name  # a snapshot: the catalog may change later
        self.clerk_id = clerk_id
        self.created_at = now
        self.updated_at = now
        self.finished_at: float | None = None
        self.result: PreReviewResult | None = None
        self.items: list[ChecklistItem] = [
            ChecklistItem(m.id, m.name, m.required) for m in matter.materials
        ]

    # ---------------------------------------------------------------------------- queries

    @property
    def finished(self) -> bool:
        return self.result is not None

    @property
    def state(self) -> str:
        """``"open"`` while the clerk may mark items, ``"finished"`` afterwards."""
        return "finished" if self.finished else "open"

    @property
    def first_pass(self) -> bool:
        """Finished and passed with nothing to correct (一次通过)."""
        return self.result is PreReviewResult.PASSED

    def item(self, material_id: str) -> ChecklistItem:
        """The checklist item of a material, or NotFoundError."""
        for item in self.items:
            if item.material_id == material_id:
                return item
        raise NotFoundError(
            f'material "{material_id}" is not on the checklist of matter "{self.matter_id}"'
        )

    def blocking_items(self) -> list[ChecklistItem]:
        """Required items not judged yet (pending or received): they block :meth:`finish`."""
        return [i for i in self.items if i.required and i.mark in _UNJUDGED]

    def evaluate(self) -> PreReviewResult:
        """The result the current marks give (see the rules); ignores unjudged items."""
        if any(i.required and i.mark is MaterialMark.MISSING for i in self.items):
            return PreReviewResult.NOT_PASSED
        if any(i.mark is MaterialMark.NEEDS_CORRECTION for i in self.items):
            return PreReviewResult.PASSED_WITH_CORRECTIONS
        return PreReviewResult.PASSED

    def corrections(self) -> list[Correction]:
        """What the resident must bring or fix, per material, in catalog order."""
        result: list[Correction] = []
        for item in self.items:
            detail = f"（{item.note}）" if item.note else ""
            if item.mark is MaterialMark.NEEDS_CORRECTION:
                result.append(
                    Correction(item.material_id, item.name, "fix", f"请更正：{item.name}{detail}")
                )
            elif item.mark is MaterialMark.MISSING and item.required:
                result.append(
                    Correction(
                        item.material_id, item.name, "bring", f"请补充提交：{item.name}{detail}"
                    )
                )
        return result

    # ---------------------------------------------------------------------------- changes

    def _check_open(self, action: str) -> None:
        if self.finished:
            raise InvalidStateError(
                f'Cannot {action} pre-review of ticket {self.ticket_id} in state "finished"'
            )

    def mark(
        self,
        material_id: str,
        mark: MaterialMark | str,
        note: str | None = None,
        file_ids: Sequence[str] | None = None,
        *,
        now: float | None = None,
    ) -> ChecklistItem:
        """Mark one material; returns its item. All checks happen before any write."""
        self._check_open(f'mark material "{material_id}" in')
        item = self.item(material_id)
        new_mark = _parse_mark(mark, material_id)
        new_note = _clean_note(note, material_id)
        new_files = None if file_ids is None else _clean_file_ids(file_ids, material_id)
        _check_note_rule(new_mark, new_note, material_id)
        item.mark = new_mark
        item.note = new_note
        if new_files is not None:
            item.file_ids = new_files
        if now is not None:
            self.updated_at = now
        return item

    def finish(self, now: float) -> PreReviewResult:
        """Compute the result and freeze the review.

        InvalidStateError while a required item is pending or received (naming the items),
        or if already finished.
        """
        self._check_open("finish")
        blocking = self.blocking_items()
        if blocking:
            names = "、".join(f"{i.name} ({i.material_id}: {i.mark})" for i in blocking)
            raise InvalidStateError(
                f"Cannot finish pre-review of ticket {self.ticket_id}: required materials "
                f"not judged yet: {names}"
            )
        self.result = self.evaluate()
        self.finished_at = now
        self.updated_at = now
        return self.result

    # ---------------------------------------------------------------------------- storage

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for the records database."""
        return {
            "version": FORMAT_VERSION,
            "ticket_id": self.ticket_id,
            "matter_id": self.matter_id,
            "matter_name": self.matter_name,
            "clerk_id": self.clerk_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "result": None if self.result is None else self.result.value,
            "first_pass": self.first_pass,  # derived; stored for reports, ignored on load
            "items": [item.to_dict() for item in self.items],
        }

    @classmethod
    def from_dict(cls, raw: Any) -> PreReview:
        """Inverse of :meth:`to_dict`; ValidationError for malformed data."""
        if not isinstance(raw, dict):
            raise ValidationError("pre-review record must be an object")
        version = raw.get("version")
        if version != FORMAT_VERSION:
            raise ValidationError(f"unsupported pre-review record version {version!r}")
        review = cls.__new__(cls)
        review.ticket_id = _str_field(raw, "ticket_id")
        review.matter_id = _str_field(raw, "matter_id")
        review.matter_name = _str_field(raw, "matter_name")
        review.clerk_id = _str_field(raw, "clerk_id")
        review.created_at = _time_field(raw, "created_at")
        review.updated_at = _time_field(raw, "updated_at")
        finished_at = raw.get("finished_at")
        review.finished_at = None if finished_at is None else _time_field(raw, "finished_at")
        result = raw.get("result")
        try:
            review.result = None if result is None else PreReviewResult(result)
        except ValueError:
            raise ValidationError(f"unknown pre-review result {result!r}") from None
        if (review.result is None) != (review.finished_at is None):
            raise ValidationError('"result" and "finished_at" must be both set or both null')
        items = raw.get("items")
        if not isinstance(items, list) or not items:
            raise ValidationError('"items" must be a non-empty list')
        review.items = [ChecklistItem.from_dict(i) for i in items]
        ids = [i.material_id for i in review.items]
        if len(set(ids)) != len(ids):
            raise ValidationError("duplicate material ids in pre-review record")
        return review

    def __repr__(self) -> str:
        return (
            f"PreReview(ticket_id={self.ticket_id!r}, matter_id={self.matter_id!r}, "
            f"state={self.state!r}, result={self.result!r})"
        )


# -------------------------------------------------------------------------------- validation


def _str_field(raw: dict[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise ValidationError(f'"{key}" must be a non-empty string')
    return value


def _time_field(raw: dict[str, Any], key: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(f'"{key}" must be a finite number')
    return float(value)


def _parse_mark(value: object, material_id: str) -> MaterialMark:
    if isinstance(value, MaterialMark):
        return value
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return MaterialMark(value)
    except ValueError:
        raise ValidationError(
            f'material "{material_id}": unknown mark {value!r} '
            f"(one of {', '.join(m.value for m in MaterialMark)})"
        ) from None


def _clean_note(note: object, material_id: str) -> str | None:
    if note is None:
        return None
    if not isinstance(note, str):
        raise ValidationError(f'material "{material_id}": the note must be text')
    text = note.strip()
    if len(text) > MAX_NOTE_CHARS:
        raise ValidationError(
            f'material "{material_id}": the note has {len(text)} characters, '
            f"at most {MAX_NOTE_CHARS} are allowed"
        )
    return text or None


def _clean_file_ids(file_ids: object, material_id: str) -> list[str]:
    if isinstance(file_ids, str) or not isinstance(file_ids, Iterable):
        raise ValidationError(f'material "{material_id}": file_ids must be a list of ids')
    result: list[str] = []
    for file_id in file_ids:
        if not isinstance(file_id, str) or not file_id.strip():
            raise ValidationError(
                f'material "{material_id}": file id {file_id!r} is not a non-empty string'
            )
        if file_id not in result:
            result.append(file_id)
    if len(result) > MAX_FILE_IDS:
        raise ValidationError(
            f'material "{material_id}": {len(result)} files linked, '
            f"at most {MAX_FILE_IDS} are allowed"
        )
    return result


def _check_note_rule(mark: MaterialMark, note: str | None, material_id: str) -> None:
    if mark is MaterialMark.NEEDS_CORRECTION and not note:
        raise ValidationError(
            f'material "{material_id}": marking it needs_correction requires a note '
            "saying what to fix"
        )


# -------------------------------------------------------------------------------- plain text

# Kinsoku (禁则): characters that must not start a line, and ones that must not end it.
_NO_LINE_START = frozenset("，。、；：！？）」』】》〉”’,.;:!?)]}%·…")
_NO_LINE_END = frozenset("（「『【《〈“‘([{")


def _is_wide(char: str) -> bool:
    return unicodedata.east_asian_width(char) in ("W", "F")


def _tokens(text: str) -> list[str]:
    """Unbreakable pieces: one CJK character, an ASCII word, or one space.

    Closing punctuation is glued to the piece before it and opening punctuation to the piece
    after it, so no line starts with "，" or ends with "（".
    """
    pieces: list[str] = []
    for char in text:
        if char.isspace():
            pieces.append(" ")
        elif (
            not _is_wide(char)
            and char not in _NO_LINE_START
            and char not in _NO_LINE_END
            and pieces
            and pieces[-1] != " "
            and not _is_wide(pieces[-1][-1])
            and pieces[-1][-1] not in _NO_LINE_START
            and pieces[-1][-1] not in _NO_LINE_END
        ):
            pieces[-1] += char  # continue an ASCII word
        else:
            pieces.append(char)
    glued: list[str] = []
    carry = ""
    for piece in pieces:
        if piece[0] in _NO_LINE_START and glued and glued[-1] != " " and not carry:
            glued[-1] += piece
        elif piece in _NO_LINE_END and piece != " ":
            carry += piece
        else:
            glued.append(carry + piece)
            carry = ""
    if carry:
        glued.append(carry)
    return glued


def wrap_text(text: str, width: int = RECEIPT_WIDTH, indent: str = "") -> list[str]:
    """Wrap one paragraph to ``width`` characters per line; ``indent`` prefixes later lines.

    Every character counts as ONE, Chinese included: the budget is characters, not terminal
    columns (the receipt printers and SMS count characters). Breaks may fall between any two
    Chinese characters, at spaces, but not inside an ASCII word (unless it is longer than a
    line) and never before closing or after opening punctuation (kinsoku). Spaces at a break
    are dropped.
    """
    if width <= len(indent):
        raise ValueError("width must be larger than the indent")
    lines: list[str] = []
    line = ""
    for token in _tokens(text):
        limit = width - (len(indent) if lines else 0)
        if token == " ":
            if line and len(line) < limit:
                line += " "
            continue
        if len(line) + len(token) <= limit:
            line += token
            continue
        if line.strip():
            lines.append(line.rstrip())
            line = ""
        limit = width - len(indent)
        while len(token) > limit:  # a piece longer than a whole line: hard split
            room = limit - len(line)
            lines.append(line + token[:room])
            line, token = "", token[room:]
        line = token
    if line.strip() or not lines:
        lines.append(line.rstrip())
    return [lines[0], *(indent + rest for rest in lines[1:])]


def _check_matter(review: PreReview, matter: Matter) -> None:
    if matter.id != review.matter_id:
        raise ValidationError(
            f'matter "{matter.id}" is not the matter of this pre-review ("{review.matter_id}")'
        )


def _result_label(review: PreReview) -> str:
    result = review.result if review.result is not None else review.evaluate()
    label = RESULT_LABELS_ZH[result]
    return label if review.finished else f"{label}（预审未完成）"


def correction_text(review: PreReview, matter: Matter) -> str:
    """The correction list as plain text, at most :data:`RECEIPT_WIDTH` characters a line.

    For SMS and kiosk receipt printers. Chinese characters count as one character each (see
    :func:`wrap_text`); continuation lines of a numbered item are indented under its text.
    """
    _check_matter(review, matter)
    paragraphs: list[tuple[str, str]] = [
        (f"事项：{matter.name}", "      "),
        (f"预审结果：{_result_label(review)}", "          "),
    ]
    corrections = review.corrections()
    if corrections:
        paragraphs.append(("请按以下清单补正材料：", ""))
        for number, correction in enumerate(corrections, 1):
            prefix = f"{number}. "
            paragraphs.append((prefix + correction.text_zh, " " * len(prefix)))
    else:
        paragraphs.append(("材料齐全，无需补正。", ""))
    lines: list[str] = []
    for text, indent in paragraphs:
        lines.extend(wrap_text(text, RECEIPT_WIDTH, indent))
    return "\n".join(lines)


def template_context(
    review: PreReview,
    matter: Matter,
    *,
    hall_name: str,
    ticket_number: str,
    lookup_url: str,
    qr_svg: str = "",
    timezone: str = "Asia/Shanghai",
) -> dict[str, Any]:
    """The context of ``web/templates/correction_list.html``.

    ``qr_svg`` is inserted unescaped (``|safe``): pass only SVG the hall generated itself.
    """
    _check_matter(review, matter)
    when = review.finished_at if review.finished_at is not None else review.updated_at
    date = datetime.datetime.fromtimestamp(when, ZoneInfo(timezone)).date()
    return {
        "hall_name": hall_name,
        "matter_name": matter.name,
        "ticket_number": ticket_number,
        "date": f"{date.year}年{date.month}月{date.day}日",
        "result": review.result.value if review.result is not None else "",
        "result_zh": _result_label(review),
        "corrections": review.corrections(),
        "qr_svg": qr_svg,
        "lookup_url": lookup_url,
    }
