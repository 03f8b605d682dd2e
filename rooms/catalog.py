"""The hall's catalog: departments, matters (事项) and their material checklists, streets (街镇),
service points (远程帮办服务点), demo clerk and supervisor profiles, and service hours.

The catalog is a TOML file (the demo one is ``rooms/data/catalog.toml``; its header comment
documents the format). Loading happens in three steps:

1. TOML syntax (:mod:`tomllib`); a syntax error names the file and line;
2. shape (pydantic models with unknown fields forbidden, so a typo such as ``adress`` is an
   error, not a silently ignored key);
3. meaning: unique ids, references between sections, hours, ...

Every problem becomes one line of a :class:`~rooms.errors.CatalogError` that names the file,
the entry (``matters[3] (id "residence_permit")``, indices count from 0) and, when it can be
found, the line of the entry's ``[[table]]`` header::

    catalog.toml:212: matters[3] (id "residence_permit"): department "hrss" is not defined

The result is a tree of frozen dataclasses; the ``Mapping`` fields of :class:`Catalog` are
read-only views in file order.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import itertools
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints
from pydantic import ValidationError as PydanticValidationError

from rooms.errors import CatalogError, NotFoundError

__all__ = [
    "DEFAULT_CATALOG_PATH",
    "Catalog",
    "ClerkProfile",
    "Department",
    "Material",
    "Matter",
    "ServiceHours",
    "ServiceKind",
    "ServicePoint",
    "Street",
    "SupervisorProfile",
    "load_catalog",
    "parse_catalog",
]

DEFAULT_CATALOG_PATH: Path = Path(__file__).parent / "data" / "catalog.toml"

MINUTES_PER_DAY = 24 * 60
WEEKDAY_NAMES: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: How far :meth:`ServiceHours.next_open` looks ahead.
NEXT_OPEN_HORIZON_S = 14 * 24 * 3600

_MAX_REPORTED_PROBLEMS = 20


# --------------------------------------------------------------------------------------------
# The public model
# --------------------------------------------------------------------------------------------


class ServiceKind(StrEnum):
    CONSULTATION = "consultation"  # 咨询
    PRE_REVIEW = "pre_review"  # 材料预审


@dataclass(frozen=True, slots=True)
class Material:
    """One document of a matter's checklist (申请材料)."""

    id: str
    name: str
    name_en: str
    required: bool = True
    description: str = ""


@dataclass(frozen=True, slots=True)
class Department:
    id: str
    name: str
    name_en: str
    letter: str  # one uppercase letter, unique in the hall: the prefix of ticket numbers


def _check_weekly(weekly: Mapping[int, Sequence[tuple[int, int]]]) -> str | None:
    """Return what is wrong with a weekly schedule, or None if it is valid."""
    for day, intervals in weekly.items():
        if not isinstance(day, int) or isinstance(day, bool) or not 0 <= day <= 6:
            return f"weekday {day!r} is not 0 (Monday) .. 6 (Sunday)"
        previous_close = -1
        for interval in intervals:
            if len(interval) != 2:
                return f"weekday {day}: {interval!r} is not an (open, close) pair"
            open_m, close_m = interval
            if not 0 <= open_m < close_m <= MINUTES_PER_DAY:
                return (
                    f"weekday {day}: interval {interval!r} must satisfy "
                    f"0 <= open < close <= {MINUTES_PER_DAY}"
                )
            if open_m < previous_close:
                return f"weekday {day}: intervals must be sorted and must not overlap"
            previous_close = close_m
    return None


def _load_zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class ServiceHours:
    """Weekly opening hours in one time zone, minus closed dates (public holidays).

    ``weekly`` maps weekday (0 = Monday .. 6 = Sunday) to sorted, non-overlapping
    ``(open_minute, close_minute)`` intervals, in minutes after local midnight; the close minute
    is exclusive and may be 1440 (midnight). A weekday that is missing is closed all day.
    """

    timezone: str
    weekly: dict[int, tuple[tuple[int, int], ...]]
    closed_dates: frozenset[datetime.date] = frozenset()

    def __post_init__(self) -> None:
        problem = _check_weekly(self.weekly)
        if problem is not None:
            raise ValueError(f"ServiceHours: {problem}")
        if _load_zone(self.timezone) is None:
            raise ValueError(f"ServiceHours: unknown time zone {self.timezone!r}")

    def __hash__(self) -> int:
        return hash((self.timezone, tuple(sorted(self.weekly.items())), self.closed_dates))

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)  # ZoneInfo caches instances by key

    @classmethod
    def always(cls) -> ServiceHours:
        """Open 24 hours a day, 7 days a week (``hall serve --demo``)."""
        return cls("Asia/Shanghai", {day: ((0, MINUTES_PER_DAY),) for day in range(7)})

    def is_open(self, ts: float) -> bool:
        """True if the hall is open at POSIX time ``ts``."""
        local = datetime.datetime.fromtimestamp(ts, self.zone)
        if local.date() in self.closed_dates:
            return False
        second = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
        return any(
            open_m * 60 <= second < close_m * 60
            for open_m, close_m in self.weekly.get(local.weekday(), ())
        )

    def next_open(self, ts: float) -> float | None:
        """``ts`` if open at ``ts``; else the next opening instant after ``ts``.

        None if the hall does not open within :data:`NEXT_OPEN_HORIZON_S` (14 days).
        """
        if self.is_open(ts):
            return ts
        zone = self.zone
        today = datetime.datetime.fromtimestamp(ts, zone).date()
        for offset in range(15):
            day = today + datetime.timedelta(days=offset)
            if day in self.closed_dates:
                continue
            for open_m, _close_m in self.weekly.get(day.weekday(), ()):
                start = datetime.datetime.combine(
                    day, datetime.time(open_m // 60, open_m % 60), tzinfo=zone
                ).timestamp()
                if start > ts:
                    return start if start - ts <= NEXT_OPEN_HORIZON_S else None
        return None

    def describe(self) -> str:
        """One line, e.g. ``Asia/Shanghai: mon-fri 09:00-17:00, sat 09:00-12:00``."""
        groups: list[tuple[list[str], str]] = []
        previous = ""
        for day, name in enumerate(WEEKDAY_NAMES):
            intervals = self.weekly.get(day, ())
            text = " ".join(f"{_hhmm(o)}-{_hhmm(c)}" for o, c in intervals)
            if text and text == previous:
                groups[-1][0].append(name)
            elif text:
                groups.append(([name], text))
            previous = text
        days = ", ".join(
            f"{names[0]}-{names[-1]} {text}" if len(names) > 1 else f"{names[0]} {text}"
            for names, text in groups
        )
        result = f"{self.timezone}: {days or 'never open'}"
        if self.closed_dates:
            result += f"; {len(self.closed_dates)} closed dates"
        return result


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


@dataclass(frozen=True, slots=True)
class Matter:
    """A matter (事项) residents can get help with."""

    id: str
    name: str
    name_en: str
    department_id: str
    kinds: frozenset[ServiceKind]
    materials: tuple[Material, ...]
    typical_handle_s: int  # initial estimate of one session + wrap-up, seconds
    max_queue: int | None = None  # maximum waiting tickets; None = hall default
    widen_after_s: float | None = None  # then secondary-skilled clerks may take it; None = never
    hours: ServiceHours | None = None  # overrides the hall's hours


@dataclass(frozen=True, slots=True)
class Street:
    """A street or town (街镇) of the district."""

    id: str
    name: str
    name_en: str


@dataclass(frozen=True, slots=True)
class ServicePoint:
    """A remote-assistance kiosk (远程帮办服务点) in a residents' committee or 邻里汇."""

    id: str
    name: str
    address: str
    street_id: str
    device_secret: str  # placeholder in the catalog; real secrets are provisioned separately


@dataclass(frozen=True, slots=True)
class ClerkProfile:
    """A clerk (帮办 / 坐席) and the matters they may serve; passwords are not here."""

    id: str
    name: str
    matters: frozenset[str] = frozenset()
    departments: frozenset[str] = frozenset()
    secondary_departments: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class SupervisorProfile:
    id: str
    name: str
    departments: frozenset[str] = frozenset()  # empty = the whole hall


@dataclass(frozen=True, slots=True)
class Catalog:
    hall_name: str
    hours: ServiceHours
    departments: Mapping[str, Department]
    matters: Mapping[str, Matter]
    streets: Mapping[str, Street]
    service_points: Mapping[str, ServicePoint]
    clerks: Mapping[str, ClerkProfile]
    supervisors: Mapping[str, SupervisorProfile]
    _department_matters: Mapping[str, frozenset[str]] = field(
        init=False, repr=False, compare=False
    )
    _primary: Mapping[str, frozenset[str]] = field(init=False, repr=False, compare=False)
    _secondary: Mapping[str, frozenset[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Read-only copies, so a Catalog cannot change under the code that holds it.
        for name in (
            "departments", "matters", "streets", "service_points", "clerks", "supervisors"
        ):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        by_department: dict[str, set[str]] = {d: set() for d in self.departments}
        for matter in self.matters.values():
            by_department.setdefault(matter.department_id, set()).add(matter.id)
        department_matters = {d: frozenset(ids) for d, ids in by_department.items()}

        def of(departments: Iterable[str]) -> frozenset[str]:
            result: set[str] = set()
            for department in departments:
                result |= department_matters.get(department, frozenset())
            return frozenset(result)

        primary = {
            c.id: frozenset(c.matters & self.matters.keys()) | of(c.departments)
            for c in self.clerks.values()
        }
        secondary = {
            c.id: of(c.secondary_departments) - primary[c.id] for c in self.clerks.values()
        }
        object.__setattr__(self, "_department_matters", MappingProxyType(department_matters))
        object.__setattr__(self, "_primary", MappingProxyType(primary))
        object.__setattr__(self, "_secondary", MappingProxyType(secondary))

    def matter(self, matter_id: str) -> Matter:
        """The matter, or NotFoundError."""
        try:
            return self.matters[matter_id]
        except KeyError:
            raise NotFoundError(f"matter {matter_id!r} is not in the catalog") from None

    def department_of(self, matter_id: str) -> Department:
        """The matter's department; NotFoundError for an unknown matter."""
        department_id = self.matter(matter_id).department_id
        try:
            return self.departments[department_id]
        except KeyError:
            raise NotFoundError(
                f"department {department_id!r} of matter {matter_id!r} is not in the catalog"
            ) from None

    def department_matters(self, department_id: str) -> frozenset[str]:
        """Ids of the matters of one department (empty for an unknown department)."""
        return self._department_matters.get(department_id, frozenset())

    def clerk_matters(self, clerk_id: str) -> frozenset[str]:
        """Primary matters: explicit matters and every matter of the clerk's departments."""
        try:
            return self._primary[clerk_id]
        except KeyError:
            raise NotFoundError(f"clerk {clerk_id!r} is not in the catalog") from None

    def clerk_secondary_matters(self, clerk_id: str) -> frozenset[str]:
        """Matters of the clerk's secondary departments that are not primary matters."""
        try:
            return self._secondary[clerk_id]
        except KeyError:
            raise NotFoundError(f"clerk {clerk_id!r} is not in the catalog") from None

    def hours_for(self, matter_id: str) -> ServiceHours:
        """The matter's own hours if it has an override, else the hall's."""
        hours = self.matter(matter_id).hours
        return self.hours if hours is None else hours

    def with_hours(self, hours: ServiceHours) -> Catalog:
        """A copy with the hall's hours replaced and every matter's override removed."""
        matters = {
            mid: m if m.hours is None else dataclasses.replace(m, hours=None)
            for mid, m in self.matters.items()
        }
        return dataclasses.replace(self, hours=hours, matters=matters)

    def summary(self) -> str:
        """A multi-line, human-readable overview of the catalog."""
        materials = [m for matter in self.matters.values() for m in matter.materials]
        pre_review = sum(ServiceKind.PRE_REVIEW in m.kinds for m in self.matters.values())
        own_hours = sum(m.hours is not None for m in self.matters.values())
        points_per_street: dict[str, int] = {s: 0 for s in self.streets}
        for point in self.service_points.values():
            points_per_street[point.street_id] = points_per_street.get(point.street_id, 0) + 1
        whole_hall = sum(not s.departments for s in self.supervisors.values())
        lines = [
            self.hall_name,
            f"  hours: {self.hours.describe()}",
            f"  departments: {len(self.departments)}",
            f"  matters: {len(self.matters)} ({pre_review} with pre-review, "
            f"{len(self.matters) - pre_review} consultation only, {own_hours} with own hours)",
            f"  materials: {len(materials)} checklist entries, "
            f"{len({m.id for m in materials})} distinct",
            f"  streets: {len(self.streets)}",
            f"  service points: {len(self.service_points)}",
        ]
        for street_id, count in points_per_street.items():
            street = self.streets.get(street_id)
            label = f"{street_id} {street.name}" if street is not None else street_id
            lines.append(f"    {label}: {count}")
        lines.append(f"  clerks: {len(self.clerks)}")
        lines.append(
            f"  supervisors: {len(self.supervisors)} ({whole_hall} for the whole hall)"
        )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The file's shape (pydantic), internal
# --------------------------------------------------------------------------------------------

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
_LETTER_PATTERN = r"^[A-Z]$"
_PATTERN_MESSAGES = {
    _ID_PATTERN: "not a valid id (use letters, digits, '_' and '-'; start with a letter or digit)",
    _LETTER_PATTERN: "must be one uppercase letter A-Z",
}
_Id = Annotated[str, StringConstraints(pattern=_ID_PATTERN, max_length=64)]
_Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
_Interval = Annotated[str, StringConstraints(min_length=1)]
_Date = Annotated[datetime.date, Strict(False)]  # a TOML date, or a "YYYY-MM-DD" string


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _HoursIn(_In):
    timezone: _Text
    mon: list[_Interval] = Field(default_factory=list)
    tue: list[_Interval] = Field(default_factory=list)
    wed: list[_Interval] = Field(default_factory=list)
    thu: list[_Interval] = Field(default_factory=list)
    fri: list[_Interval] = Field(default_factory=list)
    sat: list[_Interval] = Field(default_factory=list)
    sun: list[_Interval] = Field(default_factory=list)
    closed_dates: list[_Date] = Field(default_factory=list)


class _HallIn(_In):
    name: _Text
    hours: _HoursIn


class _DepartmentIn(_In):
    id: _Id
    name: _Text
    name_en: _Text
    letter: Annotated[str, StringConstraints(pattern=_LETTER_PATTERN)]


class _MaterialIn(_In):
    id: _Id
    name: _Text
    name_en: _Text
    required: bool = True
    description: str = ""


class _MatterIn(_In):
    id: _Id
    name: _Text
    name_en: _Text
    department: str
    kinds: list[Literal["consultation", "pre_review"]]
    typical_handle_s: Annotated[int, Field(gt=0)]
    max_queue: Annotated[int, Field(ge=1)] | None = None
    widen_after_s: Annotated[float, Field(ge=0)] | None = None
    hours: _HoursIn | None = None
    materials: list[_MaterialIn] = Field(default_factory=list)


class _StreetIn(_In):
    id: _Id
    name: _Text
    name_en: _Text


class _ServicePointIn(_In):
    id: _Id
    name: _Text
    address: _Text
    street: str
    device_secret: Annotated[str, StringConstraints(min_length=1)]


class _ClerkIn(_In):
    id: _Id
    name: _Text
    matters: list[str] = Field(default_factory=list)
    departments: list[str] = Field(default_factory=list)
    secondary_departments: list[str] = Field(default_factory=list)


class _SupervisorIn(_In):
    id: _Id
    name: _Text
    departments: list[str] = Field(default_factory=list)


class _CatalogIn(_In):
    hall: _HallIn
    departments: list[_DepartmentIn] = Field(default_factory=list)
    matters: list[_MatterIn] = Field(default_factory=list)
    streets: list[_StreetIn] = Field(default_factory=list)
    service_points: list[_ServicePointIn] = Field(default_factory=list)
    clerks: list[_ClerkIn] = Field(default_factory=list)
    supervisors: list[_SupervisorIn] = Field(default_factory=list)


# Which model describes the table at a path (list indices left out): for "did you mean".
_MODELS: dict[tuple[str, ...], type[BaseModel]] = {
    (): _CatalogIn,
    ("hall",): _HallIn,
    ("hall", "hours"): _HoursIn,
    ("departments",): _DepartmentIn,
    ("matters",): _MatterIn,
    ("matters", "hours"): _HoursIn,
    ("matters", "materials"): _MaterialIn,
    ("streets",): _StreetIn,
    ("service_points",): _ServicePointIn,
    ("clerks",): _ClerkIn,
    ("supervisors",): _SupervisorIn,
}


# --------------------------------------------------------------------------------------------
# Problem reporting
# --------------------------------------------------------------------------------------------

_Loc = tuple[str | int, ...]


class _Reporter:
    """Collects problems and renders them as lines naming file, line and entry."""

    def __init__(self, source: str, text: str, raw: Mapping[str, Any]) -> None:
        self.source = source
        self.raw = raw
        self.headers = _table_headers(text)
        self.problems: list[str] = []

    def add(self, loc: _Loc, problem: str) -> None:
        where = _describe_loc(self.raw, loc)
        line = _header_line(self.headers, self.raw, loc)
        prefix = f"{self.source}:{line}" if line is not None else self.source
        self.problems.append(f"{prefix}: {where}: {problem}" if where else f"{prefix}: {problem}")

    def raise_if_any(self) -> None:
        if not self.problems:
            return
        shown = self.problems[:_MAX_REPORTED_PROBLEMS]
        if len(self.problems) > len(shown):
            shown.append(f"... and {len(self.problems) - len(shown)} more problems")
        raise CatalogError("\n".join(shown))


def _child(node: Any, key: str | int) -> Any:
    if isinstance(key, int):
        return node[key] if isinstance(node, list) and -len(node) <= key < len(node) else None
    return node.get(key) if isinstance(node, dict) else None


def _describe_loc(raw: Mapping[str, Any], loc: _Loc) -> str:
    """``matters[3] (id "x"): materials[1] (id "id_card")``, ``hall.hours``, ..."""
    parts: list[str] = []
    current = ""
    node: Any = raw
    for key in loc:
        node = _child(node, key)
        if isinstance(key, int):
            current += f"[{key}]"
            if isinstance(node, dict):
                ident = node.get("id")
                if isinstance(ident, str):
                    current += f' (id "{ident}")'
                parts.append(current)
                current = ""
        else:
            current = f"{current}.{key}" if current else key
    if current:
        parts.append(current)
    return ": ".join(parts)


def _table_headers(text: str) -> list[tuple[int, str, bool]]:
    """(line number, dotted name, is array of tables) of every ``[table]`` header."""
    headers = []
    pattern = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\s-]+?)\s*\]\]?\s*(?:#.*)?$")
    for number, line in enumerate(text.splitlines(), start=1):
        match = pattern.match(line)
        if match:
            name = re.sub(r"\s+", "", match.group(2))
            headers.append((number, name, match.group(1) == "[["))
    return headers


def _header_line(
    headers: list[tuple[int, str, bool]], raw: Mapping[str, Any], loc: _Loc
) -> int | None:
    """Best-effort line of the deepest ``[table]`` / ``[[array]]`` header on ``loc``'s path.

    Only headers are searched; entries written as inline tables have no line.
    """
    start, end = 0, len(headers)  # the window of headers inside the current table
    name = ""
    line: int | None = None
    node: Any = raw
    for key in loc:
        parent, node = node, _child(node, key)
        if isinstance(key, str):
            name = f"{name}.{key}" if name else key
            for number, header, is_array in headers[start:end]:
                if header == name and not is_array:
                    line = number
                    break
            continue
        if not isinstance(node, dict) or not isinstance(parent, list) or key < 0:
            break
        indices = [i for i in range(start, end) if headers[i][1] == name and headers[i][2]]
        if len(indices) != len(parent):
            break  # (partly) inline tables: do not guess
        first = indices[key]
        line = headers[first][0]
        stop = first + 1
        while stop < end and headers[stop][1].startswith(name + "."):
            stop += 1
        start, end = first + 1, stop
    return line


def _report_validation_error(reporter: _Reporter, exc: PydanticValidationError) -> None:
    for error in exc.errors(include_url=False):
        loc: _Loc = tuple(error["loc"])
        kind = error["type"]
        if kind in ("missing", "extra_forbidden") and loc and isinstance(loc[-1], str):
            container, name = loc[:-1], loc[-1]
            if kind == "missing":
                reporter.add(container, f'missing field "{name}"')
            else:
                reporter.add(container, f'unknown field "{name}"{_did_you_mean(container, name)}')
            continue
        # Name the deepest table on the path (an entry) and the field path below it.
        entry_end = 0
        for i in range(len(loc) - 1):
            if isinstance(_child_at(reporter.raw, loc[: i + 1]), dict):
                entry_end = i + 1
        entry, rest = loc[:entry_end], loc[entry_end:]
        field_name = _dotted(rest)
        message = error["msg"]
        if kind == "string_pattern_mismatch":
            message = _PATTERN_MESSAGES.get(error.get("ctx", {}).get("pattern", ""), message)
        problem = f"{message} (got {_show(error['input'])})"
        reporter.add(entry, f'field "{field_name}": {problem}' if field_name else problem)


def _child_at(raw: Mapping[str, Any], loc: _Loc) -> Any:
    node: Any = raw
    for key in loc:
        node = _child(node, key)
    return node


def _dotted(loc: _Loc) -> str:
    text = ""
    for key in loc:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else key)
    return text


def _did_you_mean(container: _Loc, name: str) -> str:
    model = _MODELS.get(tuple(k for k in container if isinstance(k, str)))
    if model is None:
        return ""
    close = difflib.get_close_matches(name, list(model.model_fields), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _show(value: Any) -> str:
    text = f'"{value}"' if isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------------------------
# Meaning: cross-references and building the dataclasses
# --------------------------------------------------------------------------------------------

_INTERVAL = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


def _minute(hour: str, minute: str) -> int | None:
    h, m = int(hour), int(minute)
    if m >= 60 or h > 24 or (h == 24 and m != 0):
        return None
    return h * 60 + m


def _build_hours(data: _HoursIn, loc: _Loc, reporter: _Reporter) -> ServiceHours | None:
    ok = True
    if _load_zone(data.timezone) is None:
        reporter.add(loc, f'timezone "{data.timezone}" is not a known IANA time zone')
        ok = False
    weekly: dict[int, tuple[tuple[int, int], ...]] = {}
    for day, day_name in enumerate(WEEKDAY_NAMES):
        intervals: list[tuple[int, int, str]] = []
        for i, text in enumerate(getattr(data, day_name)):
            where = f'{day_name}[{i}] "{text}"'
            match = _INTERVAL.match(text)
            if match is None:
                reporter.add(loc, f'{where}: expected "HH:MM-HH:MM", e.g. "09:00-17:00"')
                ok = False
                continue
            open_m, close_m = _minute(*match.group(1, 2)), _minute(*match.group(3, 4))
            if open_m is None or close_m is None:
                reporter.add(loc, f"{where}: not a time of day (00:00 .. 24:00)")
                ok = False
            elif open_m >= close_m:
                reporter.add(loc, f"{where}: opening time must be before closing time")
                ok = False
            else:
                intervals.append((open_m, close_m, where))
        intervals.sort()
        for before, after in itertools.pairwise(intervals):
            if after[0] < before[1]:
                reporter.add(loc, f"{after[2]}: overlaps {before[2]}")
                ok = False
        if intervals:
            weekly[day] = tuple((o, c) for o, c, _ in intervals)
    if not ok:
        return None
    return ServiceHours(data.timezone, weekly, frozenset(data.closed_dates))


def _check_unique(
    reporter: _Reporter, section: str, values: Sequence[str], what: str = "id"
) -> None:
    first: dict[str, int] = {}
    for index, value in enumerate(values):
        if value in first:
            reporter.add(
                (section, index),
                f'duplicate {what} "{value}" (already used by {section}[{first[value]}])',
            )
        else:
            first[value] = index


def _build(data: _CatalogIn, reporter: _Reporter) -> Catalog | None:
    r = reporter
    for section in ("departments", "matters", "streets", "service_points", "clerks",
                    "supervisors"):
        _check_unique(r, section, [entry.id for entry in getattr(data, section)])
    _check_unique(r, "departments", [d.letter for d in data.departments], what="letter")
    clerk_ids = {c.id: i for i, c in enumerate(data.clerks)}
    for index, supervisor in enumerate(data.supervisors):
        if supervisor.id in clerk_ids:
            r.add(
                ("supervisors", index),
                f'id "{supervisor.id}" is already used by clerks[{clerk_ids[supervisor.id]}] '
                "(clerks and supervisors share one login namespace)",
            )

    department_ids = {d.id for d in data.departments}
    street_ids = {s.id for s in data.streets}
    matter_ids = {m.id for m in data.matters}
    matters_per_department: dict[str, int] = {}

    hall_hours = _build_hours(data.hall.hours, ("hall", "hours"), r)

    matters: dict[str, Matter] = {}
    for index, m in enumerate(data.matters):
        loc: _Loc = ("matters", index)
        if m.department not in department_ids:
            r.add(loc, f'department "{m.department}" is not defined')
        matters_per_department[m.department] = matters_per_department.get(m.department, 0) + 1
        kinds = frozenset(ServiceKind(k) for k in m.kinds)
        if not kinds:
            r.add(loc, 'kinds must not be empty (use "consultation" and/or "pre_review")')
        if ServiceKind.PRE_REVIEW in kinds and not m.materials:
            r.add(loc, "pre_review needs a material checklist ([[matters.materials]])")
        first_material: dict[str, int] = {}
        for mi, material in enumerate(m.materials):
            if material.id in first_material:
                r.add(
                    (*loc, "materials", mi),
                    f'duplicate material id "{material.id}" '
                    f"(already used by materials[{first_material[material.id]}])",
                )
            else:
                first_material[material.id] = mi
        hours = _build_hours(m.hours, (*loc, "hours"), r) if m.hours is not None else None
        if hours is not None and hall_hours is not None:
            # The hall's closed dates (public holidays) close every matter too.
            hours = dataclasses.replace(
                hours, closed_dates=hours.closed_dates | hall_hours.closed_dates
            )
        matters.setdefault(
            m.id,
            Matter(
                id=m.id,
                name=m.name,
                name_en=m.name_en,
                department_id=m.department,
                kinds=kinds,
                materials=tuple(
                    Material(x.id, x.name, x.name_en, x.required, x.description)
                    for x in m.materials
                ),
                typical_handle_s=m.typical_handle_s,
                max_queue=m.max_queue,
                widen_after_s=m.widen_after_s,
                hours=hours,
            ),
        )

    for index, p in enumerate(data.service_points):
        if p.street not in street_ids:
            r.add(("service_points", index), f'street "{p.street}" is not defined')

    for index, c in enumerate(data.clerks):
        loc = ("clerks", index)
        for matter_id in c.matters:
            if matter_id not in matter_ids:
                r.add(loc, f'matter "{matter_id}" is not defined')
        for key, label in (("departments", "department"),
                           ("secondary_departments", "secondary department")):
            for department_id in getattr(c, key):
                if department_id not in department_ids:
                    r.add(loc, f'{label} "{department_id}" is not defined')
        served = set(c.matters) & matter_ids
        if not served and not any(matters_per_department.get(d) for d in c.departments):
            r.add(loc, "serves no matter (give matters, or departments that have matters)")

    for index, s in enumerate(data.supervisors):
        for department_id in s.departments:
            if department_id not in department_ids:
                r.add(("supervisors", index), f'department "{department_id}" is not defined')

    if r.problems or hall_hours is None:
        return None
    return Catalog(
        hall_name=data.hall.name,
        hours=hall_hours,
        departments={d.id: Department(d.id, d.name, d.name_en, d.letter) for d in data.departments},
        matters=matters,
        streets={s.id: Street(s.id, s.name, s.name_en) for s in data.streets},
        service_points={
            p.id: ServicePoint(p.id, p.name, p.address, p.street, p.device_secret)
            for p in data.service_points
        },
        clerks={
            c.id: ClerkProfile(
                c.id,
                c.name,
                frozenset(c.matters),
                frozenset(c.departments),
                frozenset(c.secondary_departments),
            )
            for c in data.clerks
        },
        supervisors={
            s.id: SupervisorProfile(s.id, s.name, frozenset(s.departments))
            for s in data.supervisors
        },
    )


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def parse_catalog(text: str, source: str = "<catalog>") -> Catalog:
    """Parse and validate catalog TOML; CatalogError lists every problem found."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"at line (\d+)", str(exc))
        where = f"{source}:{match.group(1)}" if match else source
        raise CatalogError(f"{where}: invalid TOML syntax: {exc}") from None
    reporter = _Reporter(source, text, raw)
    try:
        data = _CatalogIn.model_validate(raw)
    except PydanticValidationError as exc:
        _report_validation_error(reporter, exc)
        reporter.raise_if_any()
        raise  # pragma: no cover - a ValidationError always has at least one error
    catalog = _build(data, reporter)
    reporter.raise_if_any()
    assert catalog is not None
    return catalog


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """Load a catalog file (``None``: the built-in demo catalog)."""
    file = DEFAULT_CATALOG_PATH if path is None else Path(os.fspath(path))
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CatalogError(f"{file}: catalog file not found") from None
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{file}: not valid UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise CatalogError(f"{file}: cannot read catalog file: {exc.strerror or exc}") from None
    return parse_catalog(text, source=str(file))
