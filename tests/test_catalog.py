"""The catalog: the demo data, the model's helpers, service hours, and loader error messages."""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections import Counter
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from rooms.catalog import (
    DEFAULT_CATALOG_PATH,
    Catalog,
    ServiceHours,
    ServiceKind,
    load_catalog,
    parse_catalog,
)
from rooms.errors import CatalogError, NotFoundError

SHANGHAI = ZoneInfo("Asia/Shanghai")


def sh(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    """POSIX time of a Shanghai wall-clock time."""
    return datetime.datetime(year, month, day, hour, minute, second, tzinfo=SHANGHAI).timestamp()


@pytest.fixture(scope="module")
def demo() -> Catalog:
    """The built-in demo catalog."""
    return load_catalog()


# --------------------------------------------------------------------------------------------
# The demo catalog
# --------------------------------------------------------------------------------------------


def test_demo_catalog_has_the_districts_shape(demo: Catalog) -> None:
    """The demo file loads with 10 departments, 40 matters, 13 streets and 100 service points."""
    assert demo.hall_name == "徐汇区虚拟政务大厅"
    assert len(demo.departments) == 10
    assert len(demo.matters) == 40
    assert len(demo.streets) == 13
    assert len(demo.service_points) == 100
    assert 20 <= len(demo.clerks) <= 30
    assert len(demo.supervisors) == 2


def test_demo_departments_have_unique_letters_a_to_j(demo: Catalog) -> None:
    """Department letters are A..J, one each, and every department has about 4 matters."""
    assert sorted(d.letter for d in demo.departments.values()) == list("ABCDEFGHIJ")
    per_department = Counter(m.department_id for m in demo.matters.values())
    assert set(per_department) == set(demo.departments)
    assert all(n == 4 for n in per_department.values())


def test_demo_every_street_has_service_points(demo: Catalog) -> None:
    """Each of the 13 streets has 7 to 9 kiosks, numbered XH-001 .. XH-100, secrets placeholders."""
    per_street = Counter(p.street_id for p in demo.service_points.values())
    assert set(per_street) == set(demo.streets)
    assert all(7 <= n <= 9 for n in per_street.values())
    assert list(demo.service_points) == [f"XH-{n:03d}" for n in range(1, 101)]
    for point in demo.service_points.values():
        assert point.address.startswith("上海市徐汇区")
        assert point.device_secret == "change-me"


def test_demo_every_matter_is_served_by_at_least_two_clerks(demo: Catalog) -> None:
    """Every matter has at least two clerks serving it as a primary matter."""
    served = Counter(m for clerk in demo.clerks for m in demo.clerk_matters(clerk))
    assert {m: served[m] for m in demo.matters if served[m] < 2} == {}


def test_demo_every_clerk_serves_something_and_some_are_comprehensive(demo: Catalog) -> None:
    """Each clerk serves matters; some 综合窗口 clerks serve 3+ departments; some widen."""
    assert all(demo.clerk_matters(c) for c in demo.clerks)
    assert sum(len(c.departments) >= 3 for c in demo.clerks.values()) >= 3
    assert sum(bool(demo.clerk_secondary_matters(c)) for c in demo.clerks) >= 3


def test_demo_checklists_are_realistic(demo: Catalog) -> None:
    """Every matter has 2-7 materials with names and descriptions; pre-review ones have some."""
    for matter in demo.matters.values():
        assert matter.kinds
        assert 2 <= len(matter.materials) <= 7, matter.id
        assert 300 <= matter.typical_handle_s <= 900
        for material in matter.materials:
            assert material.name and material.name_en and material.description
        if ServiceKind.PRE_REVIEW in matter.kinds:
            assert any(m.required for m in matter.materials), matter.id
    consultation_only = [m for m in demo.matters.values() if m.kinds == {ServiceKind.CONSULTATION}]
    assert 1 <= len(consultation_only) <= 10


def test_demo_supervisors_cover_the_hall_and_one_department(demo: Catalog) -> None:
    """"supervisor" watches the whole hall; the other supervisor one department."""
    assert demo.supervisors["supervisor"].departments == frozenset()
    others = [s for s in demo.supervisors.values() if s.id != "supervisor"]
    assert len(others) == 1 and len(others[0].departments) == 1


def test_demo_hall_hours_are_weekdays_and_saturday_morning(demo: Catalog) -> None:
    """The hall opens Mon-Fri 09:00-17:00 and Sat 09:00-12:00 in Shanghai time."""
    hours = demo.hours
    assert hours.timezone == "Asia/Shanghai"
    assert hours.weekly == {d: ((540, 1020),) for d in range(5)} | {5: ((540, 720),)}
    assert datetime.date(2026, 10, 1) in hours.closed_dates


def test_default_path_is_package_data_and_loads_the_same(demo: Catalog) -> None:
    """load_catalog() reads rooms/data/catalog.toml; passing that path gives an equal catalog."""
    expected = Path(__file__).parents[1] / "rooms" / "data" / "catalog.toml"
    assert expected == DEFAULT_CATALOG_PATH
    assert load_catalog(DEFAULT_CATALOG_PATH) == demo
    assert load_catalog(str(DEFAULT_CATALOG_PATH)) == demo


def test_catalog_is_read_only_and_in_file_order(demo: Catalog) -> None:
    """Sections keep file order and cannot be modified."""
    assert next(iter(demo.departments)) == "hrss"
    assert list(demo.streets)[-1] == "huajing"
    with pytest.raises(TypeError):
        demo.matters["x"] = demo.matters["residence_permit"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        demo.hall_name = "x"  # type: ignore[misc]


def test_matters_are_hashable_even_with_own_hours(demo: Catalog) -> None:
    """Matters (including ones with an hours override) can be hashed and put in sets."""
    with_hours = [m for m in demo.matters.values() if m.hours is not None]
    assert with_hours
    assert len(set(demo.matters.values())) == 40


def test_summary_names_the_counts(demo: Catalog) -> None:
    """summary() is a multi-line text with the counts of every section and points per street."""
    text = demo.summary()
    assert text.splitlines()[0] == "徐汇区虚拟政务大厅"
    for line in ("departments: 10", "matters: 40", "streets: 13", "service points: 100",
                 f"clerks: {len(demo.clerks)}", "supervisors: 2", "materials: "):
        assert line in text
    assert "徐家汇街道: 9" in text
    assert "mon-fri 09:00-17:00, sat 09:00-12:00" in text


# --------------------------------------------------------------------------------------------
# Helpers of the model
# --------------------------------------------------------------------------------------------


def test_clerk_matters_expand_departments_and_explicit_matters(demo: Catalog) -> None:
    """Primary matters = explicit matters ∪ every matter of the clerk's departments."""
    hrss = demo.department_matters("hrss")
    assert len(hrss) == 4
    assert demo.clerk_matters("clerk01") == hrss
    comprehensive = demo.clerks["clerk18"]
    assert demo.clerk_matters("clerk18") == frozenset(
        m.id for m in demo.matters.values() if m.department_id in comprehensive.departments
    )
    assert demo.clerk_matters("clerk22") == demo.clerks["clerk22"].matters


def test_clerk_secondary_matters_exclude_primary_ones(demo: Catalog) -> None:
    """Secondary matters come from secondary departments, minus the clerk's primary matters."""
    assert demo.clerk_secondary_matters("clerk01") == frozenset()
    assert demo.clerk_secondary_matters("clerk02") == demo.department_matters("medicare")
    # clerk22 serves two police matters explicitly and has police as secondary department.
    police = demo.department_matters("police")
    assert demo.clerk_secondary_matters("clerk22") == police - demo.clerk_matters("clerk22")
    assert "residence_permit" not in demo.clerk_secondary_matters("clerk22")
    assert len(demo.clerk_secondary_matters("clerk22")) == 2


def test_unknown_clerk_or_matter_is_not_found(demo: Catalog) -> None:
    """Unknown clerk or matter ids raise NotFoundError naming the id."""
    with pytest.raises(NotFoundError, match="nobody"):
        demo.clerk_matters("nobody")
    with pytest.raises(NotFoundError, match="nobody"):
        demo.clerk_secondary_matters("nobody")
    with pytest.raises(NotFoundError, match="no_such_matter"):
        demo.department_of("no_such_matter")
    with pytest.raises(NotFoundError, match="no_such_matter"):
        demo.hours_for("no_such_matter")


def test_department_of_a_matter(demo: Catalog) -> None:
    """department_of returns the matter's department."""
    assert demo.department_of("residence_permit").id == "police"
    assert demo.department_of("unemployment_benefit").letter == "A"


def test_hours_for_uses_matter_override_else_hall(demo: Catalog) -> None:
    """A matter without own hours uses the hall's; an override replaces them."""
    assert demo.hours_for("residence_permit") is demo.hours
    tax = demo.hours_for("property_deed_tax")
    assert tax is not demo.hours
    assert tax.weekly[0] == ((540, 690), (810, 1020))  # 09:00-11:30, 13:30-17:00
    assert 5 not in tax.weekly  # no Saturday service


def test_matter_override_keeps_the_halls_closed_dates(demo: Catalog) -> None:
    """A matter's own hours are closed on the hall's closed dates (holidays) too."""
    tax = demo.hours_for("property_deed_tax")
    assert demo.hours.closed_dates <= tax.closed_dates
    assert not tax.is_open(sh(2026, 10, 1, 10, 0))


def test_with_hours_replaces_hall_hours_and_clears_overrides(demo: Catalog) -> None:
    """with_hours gives an always-open copy with no matter overrides; the original is intact."""
    always = demo.with_hours(ServiceHours.always())
    assert always.hours == ServiceHours.always()
    assert all(m.hours is None for m in always.matters.values())
    assert always.hours_for("property_deed_tax").is_open(sh(2026, 11, 29, 3, 0))  # Sunday night
    assert demo.matters["property_deed_tax"].hours is not None
    assert always.clerk_matters("clerk01") == demo.clerk_matters("clerk01")
    assert list(always.matters) == list(demo.matters)


# --------------------------------------------------------------------------------------------
# Service hours
# --------------------------------------------------------------------------------------------

WEEKLY: dict[int, tuple[tuple[int, int], ...]] = {d: ((540, 1020),) for d in range(5)}
WEEKDAYS_AND_SAT = ServiceHours(
    "Asia/Shanghai",
    WEEKLY | {5: ((540, 720),)},
    frozenset({datetime.date(2026, 10, 1), datetime.date(2026, 10, 2)}),
)
LUNCH_BREAK = ServiceHours("Asia/Shanghai", {0: ((540, 690), (810, 1020))})


def test_is_open_around_closing_time() -> None:
    """Open until 16:59:59 on a Friday; closed from 17:00:00 (close is exclusive)."""
    assert WEEKDAYS_AND_SAT.is_open(sh(2026, 11, 27, 16, 59, 59))
    assert not WEEKDAYS_AND_SAT.is_open(sh(2026, 11, 27, 17, 0, 0))
    assert WEEKDAYS_AND_SAT.is_open(sh(2026, 11, 27, 9, 0, 0))
    assert not WEEKDAYS_AND_SAT.is_open(sh(2026, 11, 27, 8, 59, 59))


def test_next_open_after_friday_closing_is_saturday_morning() -> None:
    """At Friday 17:00 the next opening is Saturday 09:00; at Saturday 12:00 it is Monday."""
    assert WEEKDAYS_AND_SAT.next_open(sh(2026, 11, 27, 17, 0)) == sh(2026, 11, 28, 9, 0)
    assert WEEKDAYS_AND_SAT.next_open(sh(2026, 11, 28, 12, 0)) == sh(2026, 11, 30, 9, 0)


def test_weekend_closed_and_early_morning_opens_same_day() -> None:
    """Sunday is closed all day; before 09:00 the next opening is the same day at 09:00."""
    assert not WEEKDAYS_AND_SAT.is_open(sh(2026, 11, 29, 10, 0))
    assert WEEKDAYS_AND_SAT.next_open(sh(2026, 11, 29, 10, 0)) == sh(2026, 11, 30, 9, 0)
    assert WEEKDAYS_AND_SAT.next_open(sh(2026, 11, 30, 7, 30)) == sh(2026, 11, 30, 9, 0)


def test_next_open_returns_ts_when_open() -> None:
    """If open at ts, next_open returns ts itself."""
    ts = sh(2026, 11, 30, 10, 15, 30)
    assert WEEKDAYS_AND_SAT.next_open(ts) == ts


def test_lunch_break_and_lunch_free_day() -> None:
    """A lunch break closes 11:30-13:30; a day without one stays open through noon."""
    assert not LUNCH_BREAK.is_open(sh(2026, 11, 30, 12, 0))
    assert LUNCH_BREAK.next_open(sh(2026, 11, 30, 11, 30)) == sh(2026, 11, 30, 13, 30)
    assert LUNCH_BREAK.is_open(sh(2026, 11, 30, 13, 30))
    assert WEEKDAYS_AND_SAT.is_open(sh(2026, 11, 30, 12, 0))  # lunch-free Monday


def test_closed_dates_are_skipped() -> None:
    """Closed dates (a Thursday and Friday holiday) are closed; next opening is Saturday."""
    assert not WEEKDAYS_AND_SAT.is_open(sh(2026, 10, 1, 10, 0))
    assert WEEKDAYS_AND_SAT.next_open(sh(2026, 9, 30, 17, 0)) == sh(2026, 10, 3, 9, 0)
    assert WEEKDAYS_AND_SAT.next_open(sh(2026, 10, 1, 10, 0)) == sh(2026, 10, 3, 9, 0)


def test_timezone_is_shanghai_utc_plus_8() -> None:
    """09:00 in Shanghai is 01:00 UTC: open at 01:00 UTC, closed at 00:59 UTC."""
    utc = datetime.UTC
    assert WEEKDAYS_AND_SAT.is_open(datetime.datetime(2026, 11, 30, 1, 0, tzinfo=utc).timestamp())
    assert not WEEKDAYS_AND_SAT.is_open(
        datetime.datetime(2026, 11, 30, 0, 59, tzinfo=utc).timestamp()
    )
    # Sunday 20:00 UTC is already Monday 04:00 in Shanghai: next opening 5 hours later.
    sunday_evening_utc = datetime.datetime(2026, 11, 29, 20, 0, tzinfo=utc).timestamp()
    assert WEEKDAYS_AND_SAT.next_open(sunday_evening_utc) == sunday_evening_utc + 5 * 3600


def test_next_open_is_none_when_never_open_within_14_days() -> None:
    """No weekly hours, or closed dates covering the next 15 days, give None."""
    never = ServiceHours("Asia/Shanghai", {})
    assert never.next_open(sh(2026, 11, 30, 10, 0)) is None
    start = datetime.date(2026, 11, 30)
    holiday = dataclasses.replace(
        WEEKDAYS_AND_SAT,
        closed_dates=frozenset(start + datetime.timedelta(days=i) for i in range(15)),
    )
    assert holiday.next_open(sh(2026, 11, 30, 10, 0)) is None
    assert not holiday.is_open(sh(2026, 12, 1, 10, 0))


def test_always_is_open_every_instant() -> None:
    """ServiceHours.always() is open at any time, so next_open(ts) == ts."""
    always = ServiceHours.always()
    for ts in (sh(2026, 11, 29, 0, 0), sh(2026, 11, 29, 23, 59, 59), sh(2026, 1, 1, 3, 0), 0.0):
        assert always.is_open(ts)
        assert always.next_open(ts) == ts


def test_service_hours_constructor_rejects_bad_schedules() -> None:
    """Direct construction checks weekdays, intervals and the time zone (ValueError)."""
    with pytest.raises(ValueError, match="weekday"):
        ServiceHours("Asia/Shanghai", {7: ((540, 600),)})
    with pytest.raises(ValueError, match="open < close"):
        ServiceHours("Asia/Shanghai", {0: ((600, 540),)})
    with pytest.raises(ValueError, match="overlap"):
        ServiceHours("Asia/Shanghai", {0: ((540, 700), (600, 800))})
    with pytest.raises(ValueError, match="time zone"):
        ServiceHours("Mars/Olympus", {})


# --------------------------------------------------------------------------------------------
# Loader errors
# --------------------------------------------------------------------------------------------

MINIMAL = """\
[hall]
name = "测试大厅"

[hall.hours]
timezone = "Asia/Shanghai"
mon = ["09:00-12:00", "13:00-17:00"]
sat = ["09:00-12:00"]
closed_dates = [2026-10-01, "2026-10-02"]

[[departments]]
id = "hrss"
name = "区人社局"
name_en = "HRSS"
letter = "A"

[[departments]]
id = "medicare"
name = "区医保局"
name_en = "Medicare"
letter = "B"

[[matters]]
id = "unemployment"
name = "失业保险金申领"
name_en = "Unemployment benefit"
department = "hrss"
kinds = ["consultation", "pre_review"]
typical_handle_s = 600
max_queue = 10
widen_after_s = 300

[[matters.materials]]
id = "id_card"
name = "居民身份证"
name_en = "ID card"
description = "本人身份证原件。"

[[matters.materials]]
id = "bank_card"
name = "银行卡"
name_en = "Bank card"
required = false

[[matters]]
id = "reimbursement"
name = "零星报销"
name_en = "Reimbursement"
department = "medicare"
kinds = ["consultation"]
typical_handle_s = 480

[matters.hours]
timezone = "Asia/Shanghai"
tue = ["09:00-11:30"]

[[streets]]
id = "xujiahui"
name = "徐家汇街道"
name_en = "Xujiahui"

[[service_points]]
id = "XH-001"
name = "汇站居委会 远程帮办点"
address = "上海市徐汇区天钥桥路133号"
street = "xujiahui"
device_secret = "change-me"

[[clerks]]
id = "clerk01"
name = "王芳"
departments = ["hrss"]
secondary_departments = ["medicare"]

[[clerks]]
id = "clerk02"
name = "李娜"
matters = ["reimbursement"]

[[supervisors]]
id = "supervisor"
name = "陈主任"
"""


def parse(text: str) -> Catalog:
    """Parse with the file name used in the messages below."""
    return parse_catalog(text, source="catalog.toml")


def error_of(text: str) -> str:
    """The CatalogError message of parsing ``text``."""
    with pytest.raises(CatalogError) as info:
        parse(text)
    assert info.value.code == "catalog_invalid"
    return info.value.message


def line_of(text: str, line: str, nth: int = 0) -> int:
    """1-based number of the ``nth`` line of ``text`` equal to ``line``."""
    return [i for i, x in enumerate(text.splitlines(), start=1) if x == line][nth]


def edit(old: str, new: str, text: str = MINIMAL) -> str:
    """``text`` with the first ``old`` replaced (which must occur)."""
    assert old in text
    return text.replace(old, new, 1)


def test_minimal_catalog_parses_into_the_model() -> None:
    """A small valid file gives the expected dataclasses, defaults and hours."""
    catalog = parse(MINIMAL)
    unemployment = catalog.matters["unemployment"]
    assert unemployment.kinds == {ServiceKind.CONSULTATION, ServiceKind.PRE_REVIEW}
    assert unemployment.department_id == "hrss"
    assert (unemployment.max_queue, unemployment.widen_after_s) == (10, 300.0)
    assert [m.id for m in unemployment.materials] == ["id_card", "bank_card"]
    assert unemployment.materials[0].required and not unemployment.materials[1].required
    assert unemployment.materials[1].description == ""
    assert catalog.hours.weekly == {0: ((540, 720), (780, 1020)), 5: ((540, 720),)}
    assert catalog.hours.closed_dates == {datetime.date(2026, 10, 1), datetime.date(2026, 10, 2)}
    reimbursement = catalog.hours_for("reimbursement")
    assert reimbursement.weekly == {1: ((540, 690),)}
    assert reimbursement.closed_dates == catalog.hours.closed_dates
    assert catalog.clerk_secondary_matters("clerk01") == {"reimbursement"}
    assert catalog.service_points["XH-001"].street_id == "xujiahui"
    assert catalog.supervisors["supervisor"].departments == frozenset()


def test_unknown_department_names_the_matter() -> None:
    """A matter referring to an undefined department names matter index, id and line."""
    message = error_of(edit('department = "hrss"', 'department = "hr"'))
    line = line_of(MINIMAL, "[[matters]]")
    assert message.splitlines()[0] == (
        f'catalog.toml:{line}: matters[0] (id "unemployment"): department "hr" is not defined'
    )


def test_duplicate_id_names_both_entries() -> None:
    """A duplicate id names the second entry and the first one."""
    message = error_of(edit('id = "clerk02"', 'id = "clerk01"'))
    assert 'clerks[1] (id "clerk01"): duplicate id "clerk01" (already used by clerks[0])' in message


def test_duplicate_department_letter() -> None:
    """Two departments with the same ticket letter are refused."""
    message = error_of(edit('letter = "B"', 'letter = "A"'))
    assert 'departments[1] (id "medicare"): duplicate letter "A"' in message


def test_unknown_field_typo_is_caught_with_a_suggestion() -> None:
    """A misspelt key is an unknown field (with 'did you mean'), and the real one is missing."""
    message = error_of(edit("address =", "adress ="))
    assert 'service_points[0] (id "XH-001"): unknown field "adress" (did you mean "address"?)' in (
        message
    )
    assert 'service_points[0] (id "XH-001"): missing field "address"' in message


def test_missing_field_names_entry_and_line() -> None:
    """A missing required field names the entry, its id and its [[header]] line."""
    text = edit('id = "XH-001"\nname = "汇站居委会 远程帮办点"\n', 'id = "XH-001"\n')
    line = line_of(text, "[[service_points]]")
    assert error_of(text) == (
        f'catalog.toml:{line}: service_points[0] (id "XH-001"): missing field "name"'
    )


def test_missing_id_names_the_entry_by_index() -> None:
    """Without an id the entry is still named by section and index."""
    message = error_of(edit('id = "bank_card"\n', ""))
    assert 'matters[0] (id "unemployment"): materials[1]: missing field "id"' in message


def test_wrong_type_and_range_are_reported_with_the_value() -> None:
    """Wrong types and out-of-range numbers name the field and show the bad value."""
    message = error_of(edit("typical_handle_s = 600", 'typical_handle_s = "600"'))
    assert 'matters[0] (id "unemployment"): field "typical_handle_s"' in message
    assert '(got "600")' in message
    for old, new, name in [
        ("typical_handle_s = 600", "typical_handle_s = 0", "typical_handle_s"),
        ("max_queue = 10", "max_queue = 0", "max_queue"),
        ("widen_after_s = 300", "widen_after_s = -1", "widen_after_s"),
    ]:
        assert f'matters[0] (id "unemployment"): field "{name}"' in error_of(edit(old, new))


def test_bad_kind_and_empty_kinds() -> None:
    """An unknown kind and an empty kinds list are both refused, naming the matter."""
    message = error_of(edit('kinds = ["consultation"]', 'kinds = ["consult"]'))
    assert 'matters[1] (id "reimbursement"): field "kinds[0]"' in message
    message = error_of(edit('kinds = ["consultation"]', "kinds = []"))
    assert 'matters[1] (id "reimbursement"): kinds must not be empty' in message


def test_bad_id_characters() -> None:
    """Ids with spaces or other characters that break keys and URLs are refused."""
    message = error_of(edit('id = "id_card"', 'id = "id card"'))
    assert 'materials[0] (id "id card"): field "id": not a valid id' in message


def test_pre_review_without_materials() -> None:
    """A pre_review matter with no material checklist is refused."""
    text = edit('kinds = ["consultation"]', 'kinds = ["consultation", "pre_review"]')
    message = error_of(text)
    assert 'matters[1] (id "reimbursement"): pre_review needs a material checklist' in message


def test_duplicate_material_id_within_a_matter() -> None:
    """Material ids must be unique within a matter."""
    message = error_of(edit('id = "bank_card"', 'id = "id_card"'))
    assert (
        'matters[0] (id "unemployment"): materials[1] (id "id_card"): duplicate material id '
        '"id_card"'
    ) in message


def test_unknown_street_of_a_service_point() -> None:
    """A service point on an undefined street is refused."""
    message = error_of(edit('street = "xujiahui"', 'street = "xjh"'))
    assert 'service_points[0] (id "XH-001"): street "xjh" is not defined' in message


def test_clerk_references_and_clerk_serving_nothing() -> None:
    """Clerk matters/departments must exist; a clerk must serve at least one matter."""
    message = error_of(edit('matters = ["reimbursement"]', 'matters = ["nope"]'))
    assert 'clerks[1] (id "clerk02"): matter "nope" is not defined' in message
    assert 'clerks[1] (id "clerk02"): serves no matter' in message
    message = error_of(edit('secondary_departments = ["medicare"]',
                            'secondary_departments = ["med"]'))
    assert 'clerks[0] (id "clerk01"): secondary department "med" is not defined' in message
    message = error_of(edit('departments = ["hrss"]', "departments = []"))
    assert 'clerks[0] (id "clerk01"): serves no matter' in message


def test_supervisor_department_must_exist_and_id_differ_from_clerks() -> None:
    """Supervisors' departments must exist and their login ids must not be clerk ids."""
    message = error_of(edit('name = "陈主任"', 'name = "陈主任"\ndepartments = ["x"]'))
    assert 'supervisors[0] (id "supervisor"): department "x" is not defined' in message
    message = error_of(edit('id = "supervisor"', 'id = "clerk01"'))
    assert 'supervisors[0] (id "clerk01"): id "clerk01" is already used by clerks[0]' in message


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        ("13:00-12:00", 'mon[1] "13:00-12:00": opening time must be before closing time'),
        ("11:00-14:00", 'mon[1] "11:00-14:00": overlaps mon[0] "09:00-12:00"'),
        ("9-17", 'mon[1] "9-17": expected "HH:MM-HH:MM"'),
        ("09:00-24:30", 'mon[1] "09:00-24:30": not a time of day'),
        ("09:60-17:00", 'mon[1] "09:60-17:00": not a time of day'),
    ],
)
def test_bad_hall_hours(interval: str, expected: str) -> None:
    """Bad intervals in [hall.hours] are refused, naming the weekday, index and text."""
    message = error_of(edit('"13:00-17:00"', f'"{interval}"'))
    assert message.startswith(f"catalog.toml:{line_of(MINIMAL, '[hall.hours]')}: hall.hours: ")
    assert expected in message


def test_hours_until_midnight_are_allowed() -> None:
    """"24:00" closes at midnight; touching intervals are fine."""
    catalog = parse(edit('"13:00-17:00"', '"12:00-24:00"'))
    assert catalog.hours.weekly[0] == ((540, 720), (720, 1440))


def test_bad_weekday_key_and_timezone() -> None:
    """A weekday by number or a misspelt time zone is refused."""
    message = error_of(edit('sat = ["09:00-12:00"]', '6 = ["09:00-12:00"]'))
    assert 'hall.hours: unknown field "6"' in message
    message = error_of(edit('timezone = "Asia/Shanghai"', 'timezone = "Asia/Shangai"'))
    assert 'hall.hours: timezone "Asia/Shangai" is not a known IANA time zone' in message
    message = error_of(edit('closed_dates = [2026-10-01, "2026-10-02"]',
                            'closed_dates = ["2026-13-01"]'))
    assert 'hall.hours: field "closed_dates[0]"' in message


def test_bad_matter_hours_name_the_matter() -> None:
    """An error in a matter's own hours names the matter and the [matters.hours] line."""
    message = error_of(edit('tue = ["09:00-11:30"]', 'tue = ["11:30-09:00"]'))
    line = line_of(MINIMAL, "[matters.hours]")
    assert message == (
        f'catalog.toml:{line}: matters[1] (id "reimbursement"): hours: tue[0] "11:30-09:00": '
        "opening time must be before closing time"
    )


def test_all_problems_are_reported_together() -> None:
    """Several problems produce one message with one line per problem."""
    text = edit('street = "xujiahui"', 'street = "x"', edit('letter = "B"', 'letter = "A"'))
    lines = error_of(text).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"catalog.toml:{line_of(MINIMAL, '[[departments]]', 1)}: ")
    assert lines[1].startswith(f"catalog.toml:{line_of(MINIMAL, '[[service_points]]')}: ")


def test_missing_hall_section() -> None:
    """A file without [hall] says so."""
    message = error_of(MINIMAL.split("[[departments]]", 1)[1].join(["[[departments]]", ""]))
    assert 'catalog.toml: missing field "hall"' in message


def test_bad_toml_syntax_names_file_and_line() -> None:
    """A TOML syntax error names the file and the line."""
    message = error_of(edit('letter = "B"', "letter = B"))
    line = line_of(MINIMAL, 'letter = "B"')
    assert re.match(rf"catalog\.toml:{line}: invalid TOML syntax: .*line {line}", message)


def test_load_catalog_missing_file_names_it(tmp_path: Path) -> None:
    """A missing file is a CatalogError naming the path."""
    path = tmp_path / "nope.toml"
    with pytest.raises(CatalogError, match=re.escape(f"{path}: catalog file not found")):
        load_catalog(path)


def test_load_catalog_errors_name_the_file(tmp_path: Path) -> None:
    """Errors in a loaded file carry its path; a directory or non-UTF-8 file is reported too."""
    path = tmp_path / "catalog.toml"
    path.write_text(edit('department = "hrss"', 'department = "hr"'), encoding="utf-8")
    line = line_of(MINIMAL, "[[matters]]")
    with pytest.raises(CatalogError, match=re.escape(f"{path}:{line}: matters[0]")):
        load_catalog(path)
    with pytest.raises(CatalogError, match=re.escape(str(tmp_path))):
        load_catalog(tmp_path)
    path.write_bytes(b'[hall]\nname = "\xff"\n')
    with pytest.raises(CatalogError, match="UTF-8"):
        load_catalog(path)


def test_load_catalog_accepts_a_byte_order_mark(tmp_path: Path) -> None:
    """A file saved with a UTF-8 BOM (Windows editors) loads."""
    path = tmp_path / "catalog.toml"
    path.write_text("\ufeff" + MINIMAL, encoding="utf-8")
    assert load_catalog(path).hall_name == "测试大厅"
