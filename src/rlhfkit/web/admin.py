"""The admin's pages: users, projects and their settings, members, prompts, progress,
agreement, disagreements and their adjudication, gold items, and downloads."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import delete, func, select

from rlhfkit.data.jsonl import parse_jsonl_lines, write_jsonl
from rlhfkit.data.records import RecordError, check_completions
from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.agreement import compare
from rlhfkit.feedback.pairs import (
    build_pairs,
    latest_adjudications,
    load_labels,
    load_rankings,
)
from rlhfkit.feedback.store import (
    Adjudication,
    Gold,
    Labeler,
    Member,
    Project,
    Prompt,
    Registry,
    User,
    ensure_project,
)
from rlhfkit.feedback.summary import labelers_summary, save_heatmap
from rlhfkit.web import accounts, labeling
from rlhfkit.web.requests import Posted, csv_bytes, json_response, posted_ranks, require_admin

if TYPE_CHECKING:
    from rlhfkit.web.app import Web

MODES = ("ranking", "thumbs")
PROMPTS_A_PAGE = 200


def _project(session, project_id: int) -> Project:
    project = session.get(Project, project_id)
    if project is None:
        raise HTTPException(404, "no such project")
    return project


def _int(form: dict[str, Any], key: str, low: int, high: int) -> int:
    try:
        value = int(str(form.get(key, "")))
    except ValueError:
        raise RlhfkitError(f"{key} must be a whole number") from None
    if not low <= value <= high:
        raise RlhfkitError(f"{key} must be between {low} and {high}")
    return value


def project_settings(form: dict[str, Any]) -> dict[str, Any]:
    mode = str(form.get("mode", "ranking"))
    if mode not in MODES:
        raise RlhfkitError("mode must be ranking or thumbs")
    criterion = str(form.get("criterion", "")).strip()
    if not criterion or len(criterion) > 200:
        raise RlhfkitError("the criterion needs 1 to 200 characters")
    return {
        "criterion": criterion,
        "instructions": str(form.get("instructions", "")),
        "mode": mode,
        "overlap": _int(form, "overlap", 1, 100),
        "allow_ties": form.get("allow_ties") == "on",
    }


def read_completions_upload(data: bytes, name: str) -> list[tuple[str, list[str], str | None]]:
    """(prompt, completions, id) of each line of an uploaded JSONL file, all checked before
    any is stored, as `rlhfkit feedback import` checks its files."""
    rows = []
    for number, obj in parse_jsonl_lines(data.splitlines(keepends=True), name):
        try:
            if "ranks" in obj or "labeler" in obj:
                raise RecordError(
                    "rankings come in through `rlhfkit feedback import`; upload prompts with "
                    "their completions only"
                )
            prompt, completions = check_completions(obj)
        except RecordError as e:
            raise RlhfkitError(f"{name}:{number}: {e}") from None
        external = obj.get("id")
        rows.append((prompt, completions, None if external is None else str(external)))
    if not rows:
        raise RlhfkitError(f"{name}: no prompts")
    return rows


def add_prompts(session, project: Project, rows, model: str | None = None) -> tuple[int, int]:
    """Store prompts with their completions in the project; (prompts, completions) added."""
    registry = Registry(session, project)
    before = session.scalar(select(func.count(Prompt.id)).where(Prompt.project_id == project.id))
    for text, completions, external in rows:
        prompt = registry.prompt(text, external)
        for completion in completions:
            registry.completion(prompt, completion, model)
    after = session.scalar(select(func.count(Prompt.id)).where(Prompt.project_id == project.id))
    return after - before, registry.created_completions


def added_page(web: Web, request: Request, project_id: int, added: tuple[int, int]):
    return web.page(
        request,
        "message.html",
        message=f"added {added[0]} prompts, {added[1]} completions",
        back=f"/admin/p/{project_id}",
    )


def disagreements(session, project: Project, limit: int = 50) -> list[dict[str, Any]]:
    """The prompts ranked by two or more labelers, those whose labelers agree least first:
    the share of (labeler pair, completion pair) comparisons on which they disagree."""
    rankings = load_rankings(session, project)
    adjudicated = latest_adjudications(session, project)
    rows = []
    for prompt_id, by_labeler in rankings.items():
        if len(by_labeler) < 2:
            continue
        names = sorted(by_labeler)
        agree = total = 0
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                n, t = compare(by_labeler[a], by_labeler[b])
                agree, total = agree + n, total + t
        if total:
            rows.append(
                {
                    "prompt_id": prompt_id,
                    "disagreement": 1 - agree / total,
                    "rankings": by_labeler,
                    "adjudicated": adjudicated.get(prompt_id),
                }
            )
    rows.sort(key=lambda r: (-r["disagreement"], r["prompt_id"]))
    rows = rows[:limit]
    for row in rows:
        prompt = session.get(Prompt, row["prompt_id"])
        row["prompt"] = prompt.text
        row["completions"] = [(c.id, c.text) for c in prompt.completions]
    return rows


def gold_agreement(session, project: Project) -> dict[str, dict[str, float | None]]:
    """Each labeler's agreement with the gold rankings: τ-b averaged over gold prompts, and
    the share of completion pairs ordered as the gold orders them."""
    from scipy.stats import kendalltau

    golds = {
        g.prompt_id: {int(c): r for c, r in g.ranks.items()}
        for g in session.scalars(select(Gold).join(Prompt).where(Prompt.project_id == project.id))
    }
    answers = load_rankings(session, project, gold=True)
    taus: dict[str, list[float]] = {}
    pairs: dict[str, list[int]] = {}
    for prompt_id, by_labeler in answers.items():
        truth = golds.get(prompt_id)
        if truth is None:
            continue
        for name, ranking in by_labeler.items():
            items = sorted(set(ranking) & set(truth))
            tau = kendalltau([truth[i] for i in items], [ranking[i] for i in items]).statistic
            if tau == tau:  # not NaN (all tied)
                taus.setdefault(name, []).append(float(tau))
            n, t = compare(ranking, truth)
            counts = pairs.setdefault(name, [0, 0])
            counts[0], counts[1] = counts[0] + n, counts[1] + t
    names = set(taus) | set(pairs)
    return {
        name: {
            "gold_tau_b": sum(taus[name]) / len(taus[name]) if taus.get(name) else None,
            "gold_pairwise": pairs[name][0] / pairs[name][1]
            if pairs.get(name, [0, 0])[1]
            else None,
            "gold_items": len(taus.get(name, [])),
        }
        for name in names
    }


def agreement_rows(session, project: Project, method: str, min_tau: float) -> dict[str, Any]:
    rankings = load_labels(session, project)
    summary = labelers_summary(rankings, method, min_tau)
    gold = gold_agreement(session, project)
    for row in summary["labelers"]:
        row.update(gold.get(row["labeler"], {"gold_tau_b": None, "gold_pairwise": None}))
    summary["project"] = project.name
    return summary


AGREEMENT_COLUMNS = [
    "labeler",
    "prompts",
    "tau_b",
    "pairwise",
    "comparisons",
    "flagged",
    "gold_tau_b",
    "gold_pairwise",
]


def pairs_bytes(session, project: Project, method: str, per_labeler: bool, min_tau) -> bytes:
    """The pairs file, byte for byte as `rlhfkit feedback pairs` writes it."""
    result = build_pairs(session, project, method, per_labeler, min_tau)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "pairs.jsonl")
        write_jsonl(path, result.pairs)
        return path.read_bytes()


def _float(value: str | None, default: float) -> float:
    try:
        return float(value) if value not in (None, "") else default
    except ValueError:
        raise RlhfkitError("min_tau must be a number") from None


def register_admin_routes(app: FastAPI, web: Web) -> None:
    @app.get("/admin")
    def dashboard(request: Request, message: str = ""):
        require_admin(request)
        with web.store.session(read_only=True) as session:
            projects = session.scalars(select(Project).order_by(Project.name)).all()
            progress = {p.id: labeling.project_progress(session, p) for p in projects}
            users = session.scalars(select(User).join(Labeler).order_by(Labeler.name)).all()
        return web.page(request, "admin.html", projects=projects, progress=progress, users=users)

    @app.post("/admin/users")
    def add_user(request: Request, form: Posted):
        require_admin(request)
        with web.store.session() as session:
            accounts.add_user(
                session,
                str(form.get("name", "")),
                str(form.get("role", "labeler")),
                str(form.get("password", "")),
            )
        return RedirectResponse("/admin", status_code=303)

    @app.post("/admin/users/{user_id}/active")
    def set_active(request: Request, user_id: int, form: Posted):
        me = require_admin(request)
        with web.store.session() as session:
            user = session.get(User, user_id)
            if user is None:
                raise HTTPException(404, "no such user")
            if user.id == me.id:
                raise RlhfkitError("you cannot switch your own account off")
            accounts.deactivate(session, user, form.get("active") == "on")
        return RedirectResponse("/admin", status_code=303)

    @app.post("/admin/projects")
    def create_project(request: Request, form: Posted):
        require_admin(request)
        name = str(form.get("name", "")).strip()
        if not name or len(name) > 200:
            raise RlhfkitError("a project name needs 1 to 200 characters")
        fields = project_settings(form)
        with web.store.session() as session:
            if session.scalar(select(Project).where(Project.name == name)):
                raise RlhfkitError(f"project '{name}' exists already")
            project_id = ensure_project(session, name, **fields)
        return RedirectResponse(f"/admin/p/{project_id}", status_code=303)

    @app.get("/admin/p/{project_id}")
    def project_page(request: Request, project_id: int, after: int = 0):
        """The project's dashboard; its prompts are listed PROMPTS_A_PAGE at a time, from the
        first with an id above `after`."""
        require_admin(request)
        with web.store.session(read_only=True) as session:
            project = _project(session, project_id)
            progress = labeling.project_progress(session, project)
            members = set(
                session.scalars(select(Member.labeler_id).where(Member.project_id == project_id))
            )
            users = session.scalars(select(User).join(Labeler).order_by(Labeler.name)).all()
            others = session.scalars(
                select(Project.name).where(Project.id != project_id).order_by(Project.name)
            ).all()
            prompts = session.scalars(
                select(Prompt)
                .where(Prompt.project_id == project_id, Prompt.id > after)
                .order_by(Prompt.id)
                .limit(PROMPTS_A_PAGE + 1)
            ).all()
            gold = set(
                session.scalars(
                    select(Gold.prompt_id).join(Prompt).where(Prompt.project_id == project_id)
                )
            )
        return web.page(
            request,
            "admin_project.html",
            project=project,
            progress=progress,
            members=members,
            users=users,
            others=others,
            prompts=prompts[:PROMPTS_A_PAGE],
            more=len(prompts) > PROMPTS_A_PAGE,
            gold=gold,
        )

    @app.post("/admin/p/{project_id}/settings")
    def save_settings(request: Request, project_id: int, form: Posted):
        require_admin(request)
        fields = project_settings(form)
        with web.store.session() as session:
            project = _project(session, project_id)
            for key, value in fields.items():
                setattr(project, key, value)
            labeling.lock_project(session, project)
            labeling.close_finished(session, project)  # a new overlap or mode
        return RedirectResponse(f"/admin/p/{project_id}", status_code=303)

    @app.post("/admin/p/{project_id}/members")
    def save_members(request: Request, project_id: int, form: Posted):
        require_admin(request)
        chosen = {int(v) for v in form.getlist("member") if str(v).isdigit()}
        with web.store.session() as session:
            _project(session, project_id)
            known = set(session.scalars(select(User.labeler_id)))
            session.execute(
                delete(Member).where(
                    Member.project_id == project_id, Member.labeler_id.not_in(chosen)
                )
            )
            present = set(
                session.scalars(select(Member.labeler_id).where(Member.project_id == project_id))
            )
            for labeler_id in sorted((chosen & known) - present):
                session.add(Member(project_id=project_id, labeler_id=labeler_id))
        return RedirectResponse(f"/admin/p/{project_id}", status_code=303)

    @app.post("/admin/p/{project_id}/copy")
    def copy_prompts(request: Request, project_id: int, form: Posted):
        """Prompts and completions from another project of the store (where `rlhfkit
        generate` wrote them)."""
        require_admin(request)
        source_name = str(form.get("source", ""))
        limit = _int(form, "limit", 1, 1_000_000) if form.get("limit") else None
        with web.store.session() as session:
            project = _project(session, project_id)
            source = session.scalar(select(Project).where(Project.name == source_name))
            if source is None:
                raise RlhfkitError(f"no project '{source_name}' in the store")
            query = select(Prompt).where(Prompt.project_id == source.id).order_by(Prompt.id)
            rows = [
                (p.text, [c.text for c in p.completions], p.external_id)
                for p in session.scalars(query.limit(limit))
                if p.completions
            ]
            added = add_prompts(session, project, rows)
        return added_page(web, request, project_id, added)

    @app.post("/admin/p/{project_id}/upload")
    def upload(request: Request, project_id: int, form: Posted):
        require_admin(request)
        upload = form.get("file")
        if upload is None or not hasattr(upload, "read"):
            raise RlhfkitError("choose a JSONL file to upload")
        limit = web.settings.max_upload_bytes
        data = upload.file.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, f"uploads are limited to {limit // (1024 * 1024)} MB")
        rows = read_completions_upload(data, Path(upload.filename or "upload").name)
        with web.store.session() as session:
            added = add_prompts(session, _project(session, project_id), rows)
        return added_page(web, request, project_id, added)

    @app.get("/admin/p/{project_id}/agreement")
    def agreement_page(request: Request, project_id: int, method: str = "borda", min_tau: str = ""):
        require_admin(request)
        with web.store.session(read_only=True) as session:
            project = _project(session, project_id)
            summary = agreement_rows(session, project, method, _float(min_tau, 0.2))
        return web.page(request, "agreement.html", project=project, summary=summary)

    @app.get("/admin/p/{project_id}/heatmap.png")
    def heatmap(request: Request, project_id: int):
        require_admin(request)
        with web.store.session(read_only=True) as session:
            rankings = load_labels(session, _project(session, project_id))
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder, "heatmap.png")
            save_heatmap(rankings, path)
            return Response(path.read_bytes(), media_type="image/png")

    @app.get("/admin/p/{project_id}/agreement.{kind}")
    def agreement_download(
        request: Request, project_id: int, kind: str, method: str = "borda", min_tau: str = ""
    ):
        require_admin(request)
        with web.store.session(read_only=True) as session:
            project = _project(session, project_id)
            summary = agreement_rows(session, project, method, _float(min_tau, 0.2))
        name = f"{project.name}-agreement.{kind}"
        if kind == "json":
            return json_response(summary, name)
        if kind == "csv":
            return Response(
                csv_bytes(summary["labelers"], AGREEMENT_COLUMNS),
                media_type="text/csv",
                headers={"Content-Disposition": f'attachment; filename="{name}"'},
            )
        raise HTTPException(404, "agreement.csv or agreement.json")

    @app.get("/admin/p/{project_id}/pairs.jsonl")
    def pairs_download(
        request: Request,
        project_id: int,
        method: str = "borda",
        min_tau: str = "",
        per_labeler: bool = False,
        keep_flagged: bool = False,
    ):
        require_admin(request)
        with web.store.session(read_only=True) as session:
            project = _project(session, project_id)
            minimum = None if keep_flagged else _float(min_tau, 0.2)
            data = pairs_bytes(session, project, method, per_labeler, minimum)
        return Response(
            data,
            media_type="application/jsonl",
            headers={"Content-Disposition": f'attachment; filename="{project.name}-pairs.jsonl"'},
        )

    @app.get("/admin/p/{project_id}/disagreements")
    def disagreement_page(request: Request, project_id: int):
        require_admin(request)
        with web.store.session(read_only=True) as session:
            project = _project(session, project_id)
            rows = disagreements(session, project)
        return web.page(request, "disagreements.html", project=project, rows=rows)

    @app.post("/admin/p/{project_id}/adjudicate/{prompt_id}")
    def adjudicate(request: Request, project_id: int, prompt_id: int, form: Posted):
        user = require_admin(request)
        with web.store.session() as session:
            project = _project(session, project_id)
            labeling.adjudicate(session, project, user, prompt_id, posted_ranks(form))
        return RedirectResponse(f"/admin/p/{project_id}/disagreements#p{prompt_id}", 303)

    @app.post("/admin/p/{project_id}/gold/{prompt_id}")
    def gold(request: Request, project_id: int, prompt_id: int, form: Posted):
        user = require_admin(request)
        ranks = None if form.get("unset") else posted_ranks(form)
        with web.store.session() as session:
            project = _project(session, project_id)
            labeling.set_gold(session, project, user, prompt_id, ranks)
        return RedirectResponse(f"/admin/p/{project_id}/prompt/{prompt_id}", 303)

    @app.get("/admin/p/{project_id}/prompt/{prompt_id}")
    def prompt_page(request: Request, project_id: int, prompt_id: int):
        require_admin(request)
        with web.store.session(read_only=True) as session:
            project = _project(session, project_id)
            prompt = labeling.project_prompt(session, project, prompt_id)
            completions = [(c.id, c.text) for c in prompt.completions]
            gold = session.get(Gold, prompt_id)
            history = session.execute(
                select(Adjudication, Labeler.name)
                .join(User, User.id == Adjudication.user_id)
                .join(Labeler, Labeler.id == User.labeler_id)
                .where(Adjudication.prompt_id == prompt_id)
                .order_by(Adjudication.id)
            ).all()
            rankings = load_rankings(session, project, gold=gold is not None).get(prompt_id, {})
        return web.page(
            request,
            "prompt.html",
            project=project,
            prompt=prompt,
            completions=completions,
            gold={int(c): r for c, r in gold.ranks.items()} if gold else None,
            history=history,
            rankings=rankings,
        )
