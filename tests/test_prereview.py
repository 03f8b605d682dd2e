"""Pre-review (材料预审): checklist, marks, result rules, correction list and its renderings."""

from __future__ import annotations

import json

import pytest
from jinja2 import Environment, PackageLoader, StrictUndefined

from rooms.catalog import Catalog, Matter, load_catalog
from rooms.errors import InvalidStateError, NotFoundError, ValidationError
from rooms.prereview import (
    MAX_FILE_IDS,
    MAX_NOTE_CHARS,
    RECEIPT_WIDTH,
    ChecklistItem,
    Correction,
    MaterialMark,
    PreReview,
    PreReviewResult,
    correction_text,
    template_context,
    wrap_text,
)
from server.routes import STATIC_DIR

NOW = 1_795_000_000.0  # 2026-11-18, Asia/Shanghai

# retirement_approval: id_card, hukou_booklet, personnel_file, photo_1inch, bank_card (required),
# special_job_proof (optional)
MATTER_ID = "retirement_approval"
OPTIONAL_ID = "special_job_proof"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture
def matter(catalog: Catalog) -> Matter:
    return catalog.matter(MATTER_ID)


@pytest.fixture
def review(matter: Matter) -> PreReview:
    return PreReview("t-1", matter, "clerk01", NOW)


def required_ids(matter: Matter) -> list[str]:
    return [m.id for m in matter.materials if m.required]


def mark_all_acceptable(review: PreReview, matter: Matter) -> None:
    for material_id in required_ids(matter):
        review.mark(material_id, MaterialMark.ACCEPTABLE)


def test_checklist_follows_catalog_order(review: PreReview, matter: Matter) -> None:
    """The checklist has one pending item per catalog material, in catalog order."""
    assert [i.material_id for i in review.items] == [m.id for m in matter.materials]
    assert [i.name for i in review.items] == [m.name for m in matter.materials]
    assert [i.required for i in review.items] == [m.required for m in matter.materials]
    assert all(i.mark is MaterialMark.PENDING for i in review.items)
    assert review.item(OPTIONAL_ID).required is False
    assert review.state == "open" and review.result is None and not review.first_pass


def test_matter_without_materials_refused(matter: Matter) -> None:
    """A matter with no checklist cannot be pre-reviewed."""
    empty = Matter("x", "咨询", "Enquiry", "hrss", frozenset(), (), 60)
    with pytest.raises(ValidationError, match='"x"'):
        PreReview("t-1", empty, "clerk01", NOW)


def test_all_required_acceptable_passes(review: PreReview, matter: Matter) -> None:
    """All required items acceptable → passed, though the optional one is missing."""
    mark_all_acceptable(review, matter)
    review.mark(OPTIONAL_ID, MaterialMark.MISSING)
    assert review.finish(NOW + 60) is PreReviewResult.PASSED
    assert review.first_pass
    assert review.corrections() == []
    assert review.finished_at == NOW + 60


def test_optional_pending_does_not_block(review: PreReview, matter: Matter) -> None:
    """An optional item left pending or received neither blocks finish nor changes the result."""
    mark_all_acceptable(review, matter)
    review.mark(OPTIONAL_ID, "received")
    assert review.finish(NOW) is PreReviewResult.PASSED


def test_required_needs_correction_passes_with_corrections(
    review: PreReview, matter: Matter
) -> None:
    """A required item needing correction, none missing → passed_with_corrections."""
    mark_all_acceptable(review, matter)
    review.mark("photo_1inch", MaterialMark.NEEDS_CORRECTION, "背景须为白色")
    assert review.finish(NOW) is PreReviewResult.PASSED_WITH_CORRECTIONS
    assert not review.first_pass


def test_optional_needs_correction_counts(review: PreReview, matter: Matter) -> None:
    """A submitted optional material that needs fixing also gives passed_with_corrections."""
    mark_all_acceptable(review, matter)
    review.mark(OPTIONAL_ID, MaterialMark.NEEDS_CORRECTION, "缺少单位盖章")
    assert review.finish(NOW) is PreReviewResult.PASSED_WITH_CORRECTIONS
    assert [c.material_id for c in review.corrections()] == [OPTIONAL_ID]


def test_required_missing_not_passed(review: PreReview, matter: Matter) -> None:
    """Any required item missing → not_passed, even alongside items needing correction."""
    mark_all_acceptable(review, matter)
    review.mark("photo_1inch", MaterialMark.NEEDS_CORRECTION, "背景须为白色")
    review.mark("hukou_booklet", MaterialMark.MISSING)
    assert review.finish(NOW) is PreReviewResult.NOT_PASSED
    assert not review.first_pass


def test_finish_refused_while_required_pending(review: PreReview, matter: Matter) -> None:
    """finish() is refused, naming the material, while a required item is pending."""
    mark_all_acceptable(review, matter)
    review.mark("bank_card", MaterialMark.PENDING)
    with pytest.raises(InvalidStateError, match="bank_card") as info:
        review.finish(NOW)
    assert "本人银行卡" in info.value.message
    assert review.result is None and review.state == "open"


def test_received_counts_as_pending_for_required(review: PreReview, matter: Matter) -> None:
    """A required item received but not judged blocks finish() like pending."""
    mark_all_acceptable(review, matter)
    review.mark("id_card", MaterialMark.RECEIVED, file_ids=["f1"])
    with pytest.raises(InvalidStateError, match="id_card"):
        review.finish(NOW)
    assert [i.material_id for i in review.blocking_items()] == ["id_card"]


def test_marks_after_finish_refused(review: PreReview, matter: Matter) -> None:
    """After finish the review is frozen: marks and a second finish name state "finished"."""
    mark_all_acceptable(review, matter)
    review.finish(NOW)
    with pytest.raises(InvalidStateError, match='"finished"'):
        review.mark("id_card", MaterialMark.MISSING)
    with pytest.raises(InvalidStateError, match='"finished"'):
        review.finish(NOW + 1)
    assert review.item("id_card").mark is MaterialMark.ACCEPTABLE
    assert review.state == "finished"


def test_unknown_material(review: PreReview) -> None:
    """Marking a material not on the checklist raises NotFoundError naming it."""
    with pytest.raises(NotFoundError, match="passport"):
        review.mark("passport", MaterialMark.ACCEPTABLE)


def test_unknown_mark(review: PreReview) -> None:
    """An unknown mark string is a ValidationError; a valid string value is accepted."""
    with pytest.raises(ValidationError, match="ok"):
        review.mark("id_card", "ok")
    assert review.mark("id_card", "acceptable").mark is MaterialMark.ACCEPTABLE


def test_needs_correction_requires_note(review: PreReview) -> None:
    """needs_correction without a (non-blank) note is refused and changes nothing."""
    for note in (None, "", "   "):
        with pytest.raises(ValidationError, match="photo_1inch"):
            review.mark("photo_1inch", MaterialMark.NEEDS_CORRECTION, note)
    assert review.item("photo_1inch").mark is MaterialMark.PENDING


def test_missing_note_optional(review: PreReview) -> None:
    """missing needs no note; a note is stripped and kept."""
    assert review.mark("id_card", MaterialMark.MISSING).note is None
    assert review.mark("id_card", MaterialMark.MISSING, "  原件  ").note == "原件"


def test_note_length_limit(review: PreReview) -> None:
    """Notes are at most MAX_NOTE_CHARS characters."""
    review.mark("id_card", MaterialMark.MISSING, "字" * MAX_NOTE_CHARS)
    with pytest.raises(ValidationError, match=str(MAX_NOTE_CHARS)):
        review.mark("id_card", MaterialMark.MISSING, "字" * (MAX_NOTE_CHARS + 1))
    assert review.item("id_card").note == "字" * MAX_NOTE_CHARS


def test_note_replaced_files_kept(review: PreReview) -> None:
    """Re-marking replaces the note; file_ids=None keeps the links, [] clears them."""
    review.mark("id_card", MaterialMark.RECEIVED, "正反面", file_ids=["f1", "f2", "f1"])
    assert review.item("id_card").file_ids == ["f1", "f2"]
    item = review.mark("id_card", MaterialMark.ACCEPTABLE)
    assert item.note is None and item.file_ids == ["f1", "f2"]
    assert review.mark("id_card", MaterialMark.ACCEPTABLE, file_ids=[]).file_ids == []


def test_file_ids_limit(review: PreReview) -> None:
    """At most MAX_FILE_IDS distinct files per item; ids must be non-empty strings."""
    ids = [f"f{n}" for n in range(MAX_FILE_IDS)]
    assert review.mark("id_card", "received", file_ids=ids).file_ids == ids
    with pytest.raises(ValidationError, match=str(MAX_FILE_IDS)):
        review.mark("id_card", "received", file_ids=[*ids, "extra"])
    with pytest.raises(ValidationError):
        review.mark("id_card", "received", file_ids=[""])
    assert review.item("id_card").file_ids == ids


def test_corrections_in_chinese(review: PreReview, matter: Matter) -> None:
    """Corrections: bring for a missing required item, fix with the note, catalog order."""
    mark_all_acceptable(review, matter)
    review.mark("id_card", MaterialMark.MISSING, "原件")
    review.mark("hukou_booklet", MaterialMark.MISSING)
    review.mark("photo_1inch", MaterialMark.NEEDS_CORRECTION, "背景须为白色")
    review.mark(OPTIONAL_ID, MaterialMark.MISSING)  # optional: not asked for
    assert review.corrections() == [
        Correction("id_card", "居民身份证", "bring", "请补充提交：居民身份证（原件）"),
        Correction("hukou_booklet", "户口簿", "bring", "请补充提交：户口簿"),
        Correction(
            "photo_1inch", "近期一寸免冠照片", "fix", "请更正：近期一寸免冠照片（背景须为白色）"
        ),
    ]


def test_round_trip(review: PreReview, matter: Matter) -> None:
    """to_dict is JSON-safe and from_dict restores an equal review, open or finished."""
    review.mark("id_card", MaterialMark.RECEIVED, "正反面", ["f1"])
    restored = PreReview.from_dict(json.loads(json.dumps(review.to_dict())))
    assert restored.to_dict() == review.to_dict()
    assert restored.item("id_card").mark is MaterialMark.RECEIVED
    mark_all_acceptable(review, matter)
    review.mark("photo_1inch", MaterialMark.NEEDS_CORRECTION, "背景须为白色")
    review.finish(NOW + 5)
    data = json.loads(json.dumps(review.to_dict(), ensure_ascii=False))
    assert data["result"] == "passed_with_corrections" and data["first_pass"] is False
    restored = PreReview.from_dict(data)
    assert restored.to_dict() == review.to_dict()
    assert restored.result is PreReviewResult.PASSED_WITH_CORRECTIONS
    assert restored.corrections() == review.corrections()
    with pytest.raises(InvalidStateError, match='"finished"'):
        restored.mark("id_card", MaterialMark.MISSING)


def test_from_dict_rejects_malformed(review: PreReview) -> None:
    """from_dict raises ValidationError for bad versions, marks and note rules."""
    good = review.to_dict()
    bad_version = {**good, "version": 99}
    bad_mark = {**good, "items": [{**good["items"][0], "mark": "ok"}]}
    bad_note = {**good, "items": [{**good["items"][0], "mark": "needs_correction"}]}
    bad_result = {**good, "result": "passed"}  # result without finished_at
    malformed: list[object] = [
        bad_version,
        bad_mark,
        bad_note,
        bad_result,
        [],
        {**good, "items": []},
    ]
    for raw in malformed:
        with pytest.raises(ValidationError):
            PreReview.from_dict(raw)
    with pytest.raises(ValidationError):
        ChecklistItem.from_dict({"material_id": "a", "name": "b", "required": "yes"})


def test_correction_text_wraps_at_40(review: PreReview, matter: Matter) -> None:
    """correction_text: no line over 40 characters (each Chinese character counts as one)."""
    mark_all_acceptable(review, matter)
    review.mark("id_card", MaterialMark.MISSING, "原件，" + "须在有效期内并与申请人本人一致" * 4)
    review.mark(
        "photo_1inch",
        MaterialMark.NEEDS_CORRECTION,
        "照片背景须为白色，尺寸 25mm x 35mm，近六个月内拍摄（不得佩戴帽子、墨镜）。" * 2,
    )
    review.finish(NOW)
    text = correction_text(review, matter)
    lines = text.splitlines()
    assert all(len(line) <= RECEIPT_WIDTH for line in lines), lines
    assert lines[0] == "事项：退休审批"
    assert lines[1] == "预审结果：未通过"
    assert "1. 请补充提交：居民身份证（原件，" in text
    assert any(line.startswith("2. 请更正：近期一寸免冠照片") for line in lines)
    # nothing lost: the text without line breaks and indents still holds every note
    joined = "".join(line.strip() for line in lines)
    assert "须在有效期内并与申请人本人一致" * 4 in joined
    # kinsoku: no line starts with closing punctuation; "25mm" is not split
    assert not any(line.strip()[:1] in "，。）、" for line in lines)
    assert "25mm" in text


def test_correction_text_passed(review: PreReview, matter: Matter) -> None:
    """A passed review's text says nothing needs correcting; another matter is refused."""
    mark_all_acceptable(review, matter)
    review.finish(NOW)
    assert correction_text(review, matter).splitlines()[-1] == "材料齐全，无需补正。"
    other = load_catalog().matter("unemployment_benefit")
    with pytest.raises(ValidationError):
        correction_text(review, other)


def test_wrap_text_rules() -> None:
    """wrap_text breaks between Chinese characters, keeps ASCII words and indents later lines."""
    assert wrap_text("一二三四五六", 4) == ["一二三四", "五六"]
    assert wrap_text("一二三，四五六", 3) == ["一二", "三，四", "五六"]
    assert wrap_text("ab cdef gh", 5, " ") == ["ab", " cdef", " gh"]
    assert wrap_text("abcdefghij", 4) == ["abcd", "efgh", "ij"]
    assert wrap_text("", 4) == [""]
    for line in wrap_text("（测试）" * 30, 7, "  "):
        assert len(line) <= 7


def render(**context: object) -> str:
    env = Environment(
        loader=PackageLoader("web", "templates"), autoescape=True, undefined=StrictUndefined
    )
    return env.get_template("correction_list.html").render(**context)


def test_template_renders_corrections(review: PreReview, matter: Matter) -> None:
    """correction_list.html shows hall, matter, ticket, date, result, numbered list and QR area."""
    mark_all_acceptable(review, matter)
    review.mark("hukou_booklet", MaterialMark.MISSING)
    review.mark("photo_1inch", MaterialMark.NEEDS_CORRECTION, "背景须为白色")
    review.finish(NOW)
    html = render(
        **template_context(
            review,
            matter,
            hall_name="徐汇区虚拟政务大厅",
            ticket_number="A023",
            lookup_url="https://hall.example/c/abc123",
            qr_svg='<svg id="qr"></svg>',
        )
    )
    for text in (
        "徐汇区虚拟政务大厅",
        "退休审批",
        "A023",
        "2026年11月18日",
        "未通过",
        "请补充提交：户口簿",
        "请更正：近期一寸免冠照片（背景须为白色）",
        "https://hall.example/c/abc123",
        '<svg id="qr"></svg>',
    ):
        assert text in html, text
    assert html.index("户口簿") < html.index("近期一寸免冠照片")
    # Its one asset is the hall's own print stylesheet (a file: the pages' CSP has no inline
    # style); nothing from elsewhere.
    sheet = '<link rel="stylesheet" href="/static/css/correction-list.css">'
    assert "<ol" in html and "http://" not in html and html.count("<link") == 1 and sheet in html
    assert "@media print" in (STATIC_DIR / "css" / "correction-list.css").read_text()


def test_template_passed_and_escaping(review: PreReview, matter: Matter) -> None:
    """A malicious note is escaped in the page; a passed review says 通过 and needs nothing."""
    mark_all_acceptable(review, matter)
    review.mark("bank_card", MaterialMark.NEEDS_CORRECTION, "<script>alert(1)</script>")
    html = render(
        **template_context(
            review, matter, hall_name="大厅", ticket_number="A1", lookup_url="https://x/y"
        )
    )
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "本人银行卡" in html

    review.mark("bank_card", MaterialMark.ACCEPTABLE)
    review.finish(NOW)
    html = render(
        **template_context(
            review, matter, hall_name="大厅", ticket_number="A1", lookup_url="https://x/y"
        )
    )
    assert 'result-passed">通过</dd>' in html and "材料齐全，无需补正。" in html
    assert "<ol" not in html
