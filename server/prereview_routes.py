"""The resident's correction list after a pre-review: a printable page behind an
unguessable link (shown as a link or QR code at the kiosk)."""

from __future__ import annotations

import segno
from aiohttp import web

from rooms.errors import HallError
from rooms.prereview import template_context
from server import keys


async def correction_list(request: web.Request) -> web.Response:
    review_id = request.match_info["review_id"]
    if not 8 <= len(review_id) <= 64:
        raise web.HTTPNotFound(text="no such correction list")
    try:
        stored = await request.app[keys.PREREVIEWS].get(review_id)
    except HallError:
        raise web.HTTPNotFound(text="no such correction list") from None
    catalog = request.app[keys.CATALOG]
    review = stored.review
    matter = catalog.matters.get(review.matter_id)
    if matter is None:
        raise web.HTTPNotFound(text="the matter of this pre-review no longer exists")
    hall = request.app[keys.HALL]
    try:
        number = (await hall.get_ticket(review.ticket_id)).number
    except HallError:
        number = review.ticket_id  # live state is gone (restart): the id still identifies it
    # The QR is made here, from our own URL: template_context inserts it unescaped.
    qr_svg = segno.make(str(request.url), error="m").svg_inline(scale=4, title="扫码查看补正清单")
    context = template_context(review, matter, hall_name=catalog.hall_name,
                               ticket_number=number, lookup_url=str(request.url), qr_svg=qr_svg)
    html = request.app[keys.TEMPLATES].get_template("correction_list.html").render(**context)
    return web.Response(text=html, content_type="text/html", headers={
        "Cache-Control": "private, no-store",  # personal data
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",  # the URL is the key: never leak it onwards
    })
