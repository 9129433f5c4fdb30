"""The labeling web app: FastAPI, pages rendered on the server from Jinja2 templates, a little
plain JavaScript served by the app itself (`static/`), and the feedback store underneath.

Every request runs in one store transaction (`Store.session`): what a page acknowledges is
committed before the page is sent. Every form carries a CSRF token, an HMAC of the login
(or, before one, of a random cookie) under the app's secret key. Everything a person or a
model wrote is rendered escaped; instructions are Markdown rendered without raw HTML and
then sanitised.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nh3
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markdown_it import MarkdownIt
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.store import Member, Project, Store, User
from rlhfkit.web import accounts, labeling
from rlhfkit.web.admin import register_admin_routes
from rlhfkit.web.requests import Posted, posted_ranks, posted_thumbs, signed_in

HERE = Path(__file__).parent
SESSION_COOKIE = "rlhfkit_session"
LOGIN_COOKIE = "rlhfkit_login"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_markdown = MarkdownIt("commonmark", {"html": False})


def render_markdown(source: str) -> str:
    """Markdown as HTML that can hold no script: raw HTML is not passed through, and the
    result is sanitised all the same."""
    return nh3.clean(_markdown.render(source))


@dataclass
class Settings:
    store_url: str | None = None
    lease_minutes: float = labeling.LEASE_MINUTES
    session_hours: float = accounts.SESSION_HOURS
    max_upload_bytes: int = 20 * 1024 * 1024
    login_attempts: int = 5  # failed logins per account and per address ...
    login_window_s: float = 300.0  # ... in this many seconds


class Web:
    """What every route needs: the store, the templates, the secret, the login limiter."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = Store(settings.store_url)
        self.secret = accounts.secret_key(self.store)
        self.limiter = accounts.LoginLimiter(settings.login_attempts, settings.login_window_s)
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True),
        )
        self.templates.filters["markdown"] = render_markdown
        with self.store.session() as session:  # prompts labeled by `feedback import` meanwhile
            for project in session.scalars(select(Project)):
                labeling.close_finished(session, project)

    def user_of(self, token: str) -> tuple[User, str] | None:
        with self.store.session(read_only=True) as session:
            return accounts.session_user(session, token)

    def csrf_token(self, subject: str) -> str:
        return hmac.new(self.secret, f"csrf:{subject}".encode(), hashlib.sha256).hexdigest()

    def page(self, request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        user = getattr(request.state, "user", None)
        subject = getattr(request.state, "csrf_subject", None)
        html = self.templates.get_template(template).render(
            user=user,
            csrf=self.csrf_token(subject) if subject else "",
            **context,
        )
        return HTMLResponse(html, status_code=status)


def set_login_cookie(response, request: Request, token: str, hours: float) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(hours * 3600),
        httponly=True,
        samesite="lax",
        secure=secure_cookie(request),
    )


def proxy(trusted: str | None) -> dict[str, object]:
    """uvicorn's settings for a reverse proxy: its X-Forwarded-For/-Proto headers are believed
    from the `trusted` addresses only (comma-separated, or *), and from nobody without them."""
    return {"proxy_headers": trusted is not None, "forwarded_allow_ips": trusted or ""}


def secure_cookie(request: Request) -> bool:
    """Secure cookies where the page came over HTTPS (behind a trusted proxy, as it says)."""
    return request.url.scheme == "https"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    web = Web(settings)
    app = FastAPI(title="rlhfkit labeling", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.web = web
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable):
        """Who is asking (from the session cookie), and the security headers on every answer."""
        request.state.user = None
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            found = await run_in_threadpool(web.user_of, token)
            if found:
                request.state.user, request.state.csrf_subject = found[0], f"session:{found[1]}"
        if request.state.user is None and request.cookies.get(LOGIN_COOKIE):
            request.state.csrf_subject = f"login:{request.cookies[LOGIN_COOKIE]}"
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        if not request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        if error.status_code == 303:  # a stranger: to the login page
            return RedirectResponse("/login", status_code=303)
        return web.page(request, "error.html", error.status_code, message=error.detail)

    @app.exception_handler(RlhfkitError)
    async def rlhfkit_error(request: Request, error: RlhfkitError):
        status = getattr(error, "status", 400)
        return web.page(request, "error.html", status, message=str(error))

    register_account_routes(app, web)
    register_labeler_routes(app, web)
    register_admin_routes(app, web)
    return app


def member_project(session: Session, user: User, project_id: int) -> tuple[Project, Member]:
    """A project the user labels; any other answers 404, as if it did not exist."""
    member = session.get(Member, (project_id, user.labeler_id))
    project = session.get(Project, project_id)
    if member is None or project is None:
        raise HTTPException(404, "no such project of yours")
    return project, member


# --- accounts ---------------------------------------------------------------------------


def register_account_routes(app: FastAPI, web: Web) -> None:
    @app.get("/login")
    def login_page(request: Request):
        if request.state.user is not None:
            return RedirectResponse("/", status_code=303)
        return login_form(request)

    def login_form(request: Request, message: str = "", status: int = 200):
        nonce = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
        request.state.csrf_subject = f"login:{nonce}"
        response = web.page(request, "login.html", status, message=message)
        response.set_cookie(
            LOGIN_COOKIE, nonce, httponly=True, samesite="lax", secure=secure_cookie(request)
        )
        return response

    @app.post("/login")
    def login(request: Request, form: Posted):
        name, password = str(form.get("name", "")).strip(), str(form.get("password", ""))
        address = request.client.host if request.client else "?"
        keys = (f"user:{name.lower()}", f"address:{address}")
        wait = web.limiter.wait(*keys)
        if wait > 0:
            return login_form(
                request, f"too many failed logins; try again in {int(wait) + 1} s", 429
            )
        with web.store.session() as session:
            user = accounts.authenticate(session, name, password)
            token = (
                accounts.start_session(session, user, web.settings.session_hours) if user else None
            )
        if token is None:
            web.limiter.failed(*keys)
            return login_form(request, "wrong name or password, or the account is off", 401)
        response = RedirectResponse("/", status_code=303)
        set_login_cookie(response, request, token, web.settings.session_hours)
        response.delete_cookie(LOGIN_COOKIE)
        return response

    @app.post("/logout")
    def logout(request: Request, form: Posted):
        signed_in(request)
        with web.store.session() as session:
            accounts.end_session(session, request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @app.get("/")
    def home(request: Request):
        user = signed_in(request)
        return RedirectResponse("/admin" if user.role == "admin" else "/projects", 303)

    @app.get("/account")
    def account(request: Request):
        signed_in(request)
        return web.page(request, "account.html")

    @app.post("/account/password")
    def change_password(request: Request, form: Posted):
        user = signed_in(request)
        new = str(form.get("new", ""))
        with web.store.session() as session:
            me = session.get(User, user.id)
            if not accounts.authenticate(session, me.labeler.name, str(form.get("current", ""))):
                return web.page(
                    request, "account.html", 400, message="the current password is wrong"
                )
            if new != form.get("again"):
                return web.page(request, "account.html", 400, message="the new passwords differ")
            try:
                accounts.set_password(session, me, new)  # ends every login of the account
            except RlhfkitError as e:
                return web.page(request, "account.html", 400, message=str(e))
            token = accounts.start_session(session, me, web.settings.session_hours)
        response = web.page(request, "account.html", message="password changed")
        set_login_cookie(response, request, token, web.settings.session_hours)
        return response


# --- labeling ---------------------------------------------------------------------------


def register_labeler_routes(app: FastAPI, web: Web) -> None:
    @app.get("/projects")
    def projects(request: Request):
        user = signed_in(request)
        with web.store.session(read_only=True) as session:
            rows = session.execute(
                select(Project, Member)
                .join(Member, Member.project_id == Project.id)
                .where(Member.labeler_id == user.labeler_id)
                .order_by(Project.name)
            ).all()
            mine = [(p, labeling.own_progress(session, p, user.labeler_id)) for p, _ in rows]
        return web.page(request, "projects.html", projects=mine)

    @app.get("/p/{project_id}/instructions")
    def instructions(request: Request, project_id: int):
        user = signed_in(request)
        with web.store.session(read_only=True) as session:
            project, member = member_project(session, user, project_id)
        return web.page(request, "instructions.html", project=project, first=member.read_at is None)

    @app.post("/p/{project_id}/instructions")
    def instructions_read(request: Request, project_id: int, form: Posted):
        user = signed_in(request)
        with web.store.session() as session:
            _, member = member_project(session, user, project_id)
            member.read_at = member.read_at or accounts.now()
        return RedirectResponse(f"/p/{project_id}/label", status_code=303)

    @app.get("/p/{project_id}/label")
    def label_page(request: Request, project_id: int):
        user = signed_in(request)
        with web.store.session() as session:
            project, member = member_project(session, user, project_id)
            if member.read_at is None:
                return RedirectResponse(f"/p/{project_id}/instructions", status_code=303)
            item = labeling.next_item(session, project, user.labeler_id, web.settings.lease_minutes)
            progress = labeling.own_progress(session, project, user.labeler_id)
        return web.page(request, "label.html", project=project, item=item, progress=progress)

    def submit(request: Request, project_id: int, prompt_id: int, action: str, form: FormData):
        user = signed_in(request)
        try:
            with web.store.session() as session:
                project, member = member_project(session, user, project_id)
                if action == "label" and project.mode == "thumbs":
                    labeling.submit_thumbs(
                        session, project, user.labeler_id, prompt_id, posted_thumbs(form)
                    )
                elif action == "label":
                    labeling.submit_ranking(
                        session, project, user.labeler_id, prompt_id, posted_ranks(form)
                    )
                else:
                    labeling.skip_item(
                        session,
                        project,
                        user.labeler_id,
                        prompt_id,
                        str(form.get("kind", "skip")),
                        str(form.get("reason", "")),
                    )
        except labeling.LabelingError as e:
            # The transaction was rolled back: nothing of this submission is stored.
            with web.store.session(read_only=True) as session:
                project, _ = member_project(session, user, project_id)
                progress = labeling.own_progress(session, project, user.labeler_id)
                item = labeling.current_item(session, project, user.labeler_id)
            return web.page(
                request,
                "label.html",
                e.status,
                project=project,
                item=item,
                progress=progress,
                message=str(e),
            )
        return RedirectResponse(f"/p/{project_id}/label", status_code=303)

    @app.post("/p/{project_id}/label/{prompt_id}")
    def label(request: Request, project_id: int, prompt_id: int, form: Posted):
        return submit(request, project_id, prompt_id, "label", form)

    @app.post("/p/{project_id}/skip/{prompt_id}")
    def skip(request: Request, project_id: int, prompt_id: int, form: Posted):
        return submit(request, project_id, prompt_id, "skip", form)
