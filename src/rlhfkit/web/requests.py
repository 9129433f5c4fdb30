"""What the app's routes share: who is asking, the posted form with its CSRF check, form
fields read as labels, and downloads."""

from __future__ import annotations

import csv
import hmac
import io
import json
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.responses import Response
from starlette.datastructures import FormData

from rlhfkit.feedback.store import User
from rlhfkit.web.labeling import LabelingError

if TYPE_CHECKING:
    from rlhfkit.web.app import Web


async def posted_form(request: Request) -> FormData:
    """The posted form, read on the event loop (the routes themselves run on worker threads,
    so a slow one holds up nobody else), once its CSRF token is the one this login (or login
    page) was given. Strangers are sent to the login page first; a body past the upload
    limit is refused before it is read."""
    web: Web = request.app.state.web
    if request.state.user is None and request.url.path != "/login":
        raise HTTPException(303)
    length = request.headers.get("content-length", "")
    if not length.isdigit():
        raise HTTPException(411, "a form must say its length (Content-Length)")
    if int(length) > web.settings.max_upload_bytes + 64 * 1024:
        limit = web.settings.max_upload_bytes / (1024 * 1024)
        raise HTTPException(413, f"uploads are limited to {limit:g} MB")
    form = await request.form()
    subject = getattr(request.state, "csrf_subject", None)
    given = str(form.get("csrf_token", ""))
    if not subject or not hmac.compare_digest(given, web.csrf_token(subject)):
        raise HTTPException(403, "this form has expired or did not come from this site; reload")
    return form


Posted = Annotated[FormData, Depends(posted_form)]


# --- who may do what --------------------------------------------------------------------


def signed_in(request: Request) -> User:
    user = request.state.user
    if user is None:
        raise HTTPException(303)
    return user


def require_admin(request: Request) -> User:
    user = signed_in(request)
    if user.role != "admin":
        raise HTTPException(403, "this page is for admins")
    return user


def _numbered_fields(form: FormData, prefix: str, read, error: str) -> dict[int, Any]:
    """`<prefix><completion id>` fields as {completion id: read(value)}."""
    fields = {}
    for key, value in form.items():
        if key.startswith(prefix):
            try:
                fields[int(key[len(prefix) :])] = read(str(value))
            except ValueError:
                raise LabelingError(error, 422) from None
    return fields


def posted_ranks(form: FormData) -> dict[int, int]:
    return _numbered_fields(form, "rank_", int, "every rank must be a whole number")


def posted_thumbs(form: FormData) -> dict[int, str]:
    return _numbered_fields(form, "thumb_", str, "malformed thumbs")


def csv_bytes(rows: list[dict[str, Any]], columns: list[str]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def json_response(data: Any, filename: str) -> Response:
    return Response(
        json.dumps(data, ensure_ascii=False, indent=2),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
