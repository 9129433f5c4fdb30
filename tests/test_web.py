"""The labeling app over HTTP (FastAPI's test client on a real store): accounts, CSRF, the
queue with its overlap and leases, submissions, skips, gold, adjudication, downloads,
uploads, escaping, and who may reach what."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from rlhfkit.feedback.store import (
    Lease,
    Prompt,
    Ranking,
    RankingItem,
    Store,
    Thumb,
    User,
    WebSession,
)
from rlhfkit.web import accounts
from rlhfkit.web.app import Settings, create_app
from web_support import PASSWORD, csrf, labeler_id, login, make_project


@pytest.fixture
def app(store_url):
    application = create_app(Settings(store_url=store_url))
    yield application
    application.state.web.store.close()


@pytest.fixture
def store(app) -> Store:
    return app.state.web.store


def client_for(app, name: str | None = None, https: bool = False) -> TestClient:
    client = TestClient(app, base_url="https://testserver" if https else "http://testserver")
    if name:
        assert login(client, name).status_code == 303
    return client


def start(client: TestClient, project_id: int):
    """Read the instructions (the first time) and return the labeling page."""
    page = client.get(f"/p/{project_id}/label", follow_redirects=True)
    if "I have read the instructions" in page.text:
        page = client.post(
            f"/p/{project_id}/instructions", data={"csrf_token": csrf(page)}, follow_redirects=True
        )
    return page


def item_of(page) -> tuple[int, list[int]] | None:
    """(prompt id, completion ids in the order shown) of a labeling page; None when done."""
    found = re.search(r'action="/p/\d+/label/(\d+)"', page.text)
    if not found:
        return None
    return int(found.group(1)), [
        int(c) for c in re.findall(r'name="(?:rank|thumb)_(\d+)"', page.text)
    ]


def rank(client, project_id: int, page, order: list[int] | None = None, **extra):
    prompt_id, shown = item_of(page)
    order = order or shown
    data = {"csrf_token": csrf(page), **{f"rank_{c}": str(i + 1) for i, c in enumerate(order)}}
    data.update(extra)
    return client.post(f"/p/{project_id}/label/{prompt_id}", data=data, follow_redirects=True)


# --- store and accounts -------------------------------------------------------------------


def test_a_store_of_the_first_schema_upgrades_in_place_keeping_every_row(tmp_path, cli):
    from alembic import command
    from sqlalchemy import create_engine, text

    from rlhfkit.feedback.store import _alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    config = _alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    engine.dispose()
    records = tmp_path / "rankings.jsonl"
    records.write_text(
        json.dumps({"prompt": "p", "completions": ["a", "b"], "ranks": [1, 2], "labeler": "x"})
        + "\n"
    )
    # an rlhfkit of the first schema would have written these; write them the same way
    engine = create_engine(url)
    with engine.begin() as connection:
        now = "2026-01-01 00:00:00"
        connection.execute(
            text(
                "INSERT INTO projects (id, name, criterion, instructions, created_at) "
                "VALUES (1, 'old', 'c', 'i', :t)"
            ),
            {"t": now},
        )
        connection.execute(
            text("INSERT INTO labelers (id, name, kind, created_at) VALUES (1, 'x', 'human', :t)"),
            {"t": now},
        )
        connection.execute(
            text(
                "INSERT INTO prompts (id, project_id, text, text_key, created_at) "
                "VALUES (1, 1, 'p', 'k', :t)"
            ),
            {"t": now},
        )
        for cid, body in ((1, "a"), (2, "b")):
            connection.execute(
                text(
                    "INSERT INTO completions (id, prompt_id, text, text_key, created_at) "
                    "VALUES (:id, 1, :body, :body, :t)"
                ),
                {"id": cid, "body": body, "t": now},
            )
        connection.execute(
            text(
                "INSERT INTO rankings (id, prompt_id, labeler_id, created_at) VALUES (1, 1, 1, :t)"
            ),
            {"t": now},
        )
        connection.execute(
            text("INSERT INTO ranking_items VALUES (1, 1, 1), (1, 2, 2)"),
        )
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()
    assert version == "0001"

    store = Store(url)  # upgrades
    with store.session(read_only=True) as session:
        from rlhfkit.feedback.store import Project

        project = session.get(Project, 1)
        assert (project.name, project.mode, project.overlap, project.allow_ties) == (
            "old",
            "ranking",
            1,
            False,
        )
        ranking = session.get(Ranking, 1)
        assert [(i.completion_id, i.rank) for i in ranking.items] == [(1, 1), (2, 2)]
        assert ranking.seconds is None
    store.close()
    out = tmp_path / "pairs.jsonl"
    cli("feedback", "pairs", "--project", "old", "--out", out, "--store", url)
    pair = json.loads(out.read_text())
    assert (pair["chosen"], pair["rejected"]) == ("a", "b")


def test_user_add_hashes_the_password_and_refuses_bad_accounts(cli, sqlite_url):
    from typer.testing import CliRunner

    from rlhfkit.cli import app as cli_app

    runner = CliRunner()
    result = runner.invoke(
        cli_app,
        ["user", "add", "ada", "--role", "admin", "--password-stdin", "--store", sqlite_url],
        input="a long enough secret\n",
    )
    assert result.exit_code == 0, result.output
    store = Store(sqlite_url)
    with store.session(read_only=True) as session:
        user = accounts.find_user(session, "ada")
        assert user.role == "admin" and user.labeler.kind == "human"
        assert user.password_hash.startswith("$argon2id$")
        assert "a long enough secret" not in user.password_hash
        assert accounts.authenticate(session, "ada", "a long enough secret") is not None
        assert accounts.authenticate(session, "ada", "a wrong secret") is None
    for args, text_in, error in (
        (["ada", "--role", "admin"], "another secret\n", "exists already"),
        (["bo"], "short\n", "at least 8"),
        (["bo", "--role", "boss"], "long enough pw\n", "admin or labeler"),
    ):
        result = runner.invoke(
            cli_app,
            ["user", "add", *args, "--password-stdin", "--store", sqlite_url],
            input=text_in,
        )
        assert result.exit_code == 1 and error in result.output
        assert "Traceback" not in result.output
    store.close()


def test_login_sets_a_safe_cookie_and_logout_ends_the_session(app, store):
    make_project(store)
    client = client_for(app)
    answer = login(client, "ann")
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    assert "rlhfkit_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain HTTP here
    secure = login(client_for(app, https=True), "ann").headers["set-cookie"]
    assert "Secure" in secure
    page = client.get("/projects")
    assert page.status_code == 200 and "harm" in page.text
    with store.session(read_only=True) as session:
        assert session.scalar(select(WebSession).limit(1)).id != client.cookies["rlhfkit_session"]
    client.post("/logout", data={"csrf_token": csrf(page)})
    assert client.get("/projects", follow_redirects=False).headers["location"] == "/login"


def test_an_expired_login_is_sent_back_to_the_login_page(app, store):
    make_project(store)
    ann = client_for(app, "ann")
    assert ann.get("/projects").status_code == 200
    with store.session() as session:
        session.execute(update(WebSession).values(expires_at=accounts.now() - timedelta(seconds=1)))
    assert ann.get("/projects", follow_redirects=False).headers["location"] == "/login"


def test_wrong_passwords_are_refused_then_rate_limited(app, store):
    make_project(store)
    client = client_for(app)
    for _ in range(5):
        assert login(client, "ann", "not the password").status_code == 401
    blocked = login(client, "ann")  # the right password, but too many failures
    assert blocked.status_code == 429 and "too many failed logins" in blocked.text
    other = login(client_for(app), "ben")  # same address: limited too
    assert other.status_code == 429


def test_a_deactivated_account_is_logged_out_and_cannot_log_in(app, store):
    make_project(store)
    ann = client_for(app, "ann")
    admin = client_for(app, "root")
    page = admin.get("/admin")
    with store.session(read_only=True) as session:
        ann_id = accounts.find_user(session, "ann").id
    admin.post(f"/admin/users/{ann_id}/active", data={"csrf_token": csrf(page)})
    assert ann.get("/projects", follow_redirects=False).status_code == 303
    assert login(client_for(app), "ann").status_code == 401


def test_forms_without_the_right_csrf_token_are_refused(app, store):
    project_id = make_project(store)
    ann = client_for(app, "ann")
    page = start(ann, project_id)
    prompt_id, shown = item_of(page)
    data = {f"rank_{c}": str(i + 1) for i, c in enumerate(shown)}
    for token in (None, "forged", csrf(client_for(app).get("/login"))):
        posted = dict(data, **({"csrf_token": token} if token else {}))
        answer = ann.post(f"/p/{project_id}/label/{prompt_id}", data=posted)
        assert answer.status_code == 403
    with store.session(read_only=True) as session:
        assert session.scalar(select(Ranking).limit(1)) is None
    # a login form posted without the token of its page is refused too
    assert (
        client_for(app).post("/login", data={"name": "ann", "password": PASSWORD}).status_code
        == 403
    )


def test_changing_the_password(app, store):
    make_project(store)
    ann = client_for(app, "ann")
    page = ann.get("/account")
    wrong = ann.post(
        "/account/password",
        data={"csrf_token": csrf(page), "current": "nope", "new": "x" * 10, "again": "x" * 10},
    )
    assert wrong.status_code == 400 and "current password is wrong" in wrong.text
    changed = ann.post(
        "/account/password",
        data={"csrf_token": csrf(page), "current": PASSWORD, "new": "y" * 10, "again": "y" * 10},
    )
    assert changed.status_code == 200 and "password changed" in changed.text
    assert ann.get("/projects").status_code == 200  # this login goes on
    assert login(client_for(app), "ann").status_code == 401
    assert login(client_for(app), "ann", "y" * 10).status_code == 303


# --- the queue ----------------------------------------------------------------------------


def test_instructions_come_first_then_are_one_click_away(app, store):
    project_id = make_project(store)
    ann = client_for(app, "ann")
    first = ann.get(f"/p/{project_id}/label", follow_redirects=True)
    assert "I have read the instructions" in first.text
    assert "<strong>least harmful</strong>" in first.text  # Markdown rendered
    page = start(ann, project_id)
    assert item_of(page) is not None
    assert f'href="/p/{project_id}/instructions"' in page.text
    again = ann.get(f"/p/{project_id}/instructions")
    assert "I have read" not in again.text and "Back to labeling" in again.text


def test_each_prompt_gets_overlap_labelers_and_nobody_gets_one_twice(app, store):
    project_id = make_project(store, prompts=4, overlap=2, labelers=("ann", "ben", "cat"))
    clients = {name: client_for(app, name) for name in ("ann", "ben", "cat")}
    pages = {name: start(c, project_id) for name, c in clients.items()}
    seen: dict[str, list[int]] = {name: [] for name in clients}
    active = set(clients)
    while active:
        for name in sorted(active):
            if item_of(pages[name]) is None:
                active.discard(name)
                continue
            seen[name].append(item_of(pages[name])[0])
            pages[name] = rank(clients[name], project_id, pages[name])
    for name, prompts in seen.items():
        assert len(prompts) == len(set(prompts)), f"{name} got a prompt twice"
    with store.session(read_only=True) as session:
        per_prompt = {}
        for ranking in session.scalars(select(Ranking)):
            per_prompt.setdefault(ranking.prompt_id, set()).add(ranking.labeler_id)
            assert ranking.seconds is not None and ranking.seconds >= 0
    assert len(per_prompt) == 4 and all(len(v) == 2 for v in per_prompt.values())
    assert sum(len(v) for v in seen.values()) == 8


def test_the_order_is_shuffled_per_labeler_and_stable_on_reload(app, store):
    project_id = make_project(store, prompts=1, completions=6, overlap=2)
    ann, ben = client_for(app, "ann"), client_for(app, "ben")
    ann_order = item_of(start(ann, project_id))[1]
    assert item_of(ann.get(f"/p/{project_id}/label"))[1] == ann_order
    ben_order = item_of(start(ben, project_id))[1]
    assert sorted(ann_order) == sorted(ben_order) and ann_order != ben_order


def test_a_double_submit_stores_one_ranking(app, store):
    project_id = make_project(store)
    ann = client_for(app, "ann")
    page = start(ann, project_id)
    prompt_id, shown = item_of(page)
    first = rank(ann, project_id, page)
    second = rank(ann, project_id, page, order=list(reversed(shown)))  # a retry
    assert first.status_code == second.status_code == 200
    with store.session(read_only=True) as session:
        rankings = session.scalars(select(Ranking).where(Ranking.prompt_id == prompt_id)).all()
        assert len(rankings) == 1
        assert {i.completion_id: i.rank for i in rankings[0].items} == {
            c: i + 1 for i, c in enumerate(shown)
        }


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda d, ids: d.pop(f"rank_{ids[0]}"), "do not fit"),
        (lambda d, ids: d.update({"rank_999999": "2"}), "do not fit"),
        (lambda d, ids: d.update({f"rank_{ids[0]}": "9"}), "ranks 1..3"),
        (lambda d, ids: d.update({f"rank_{ids[0]}": "x"}), "whole number"),
        (lambda d, ids: d.update({f"rank_{ids[1]}": "1"}), "does not allow ties"),
    ],
)
def test_ranks_that_do_not_fit_are_refused_and_nothing_is_stored(app, store, change, reason):
    project_id = make_project(store)
    ann = client_for(app, "ann")
    page = start(ann, project_id)
    prompt_id, shown = item_of(page)
    data = {"csrf_token": csrf(page), **{f"rank_{c}": str(i + 1) for i, c in enumerate(shown)}}
    change(data, shown)
    answer = ann.post(f"/p/{project_id}/label/{prompt_id}", data=data)
    assert answer.status_code == 422 and reason in answer.text
    assert item_of(answer)[0] == prompt_id  # the same item, still theirs
    with store.session(read_only=True) as session:
        assert session.scalar(select(Ranking).limit(1)) is None


def test_ties_where_the_project_allows_them(app, store):
    project_id = make_project(store, allow_ties=True)
    ann = client_for(app, "ann")
    page = start(ann, project_id)
    prompt_id, shown = item_of(page)
    data = {"csrf_token": csrf(page), **{f"rank_{c}": "1" for c in shown}}
    assert ann.post(f"/p/{project_id}/label/{prompt_id}", data=data).status_code == 200
    with store.session(read_only=True) as session:
        assert [i.rank for i in session.scalar(select(Ranking)).items] == [1, 1, 1]


def test_an_expired_lease_is_refused_and_the_prompt_goes_back_to_the_queue(app, store):
    project_id = make_project(store, prompts=1, overlap=1)
    ann, ben = client_for(app, "ann"), client_for(app, "ben")
    page = start(ann, project_id)
    prompt_id, _ = item_of(page)
    assert item_of(start(ben, project_id)) is None  # leased to ann: k = 1 is reached
    with store.session() as session:
        session.execute(update(Lease).values(expires_at=accounts.now() - timedelta(seconds=1)))
    ben_page = ben.get(f"/p/{project_id}/label")
    assert item_of(ben_page)[0] == prompt_id  # back in the queue, now ben's
    late = rank(ann, project_id, page)
    assert "ran out" in late.text
    assert rank(ben, project_id, ben_page).status_code == 200
    with store.session(read_only=True) as session:
        assert [r.labeler_id for r in session.scalars(select(Ranking))] == [
            labeler_id(store, "ben")
        ]


def test_a_prompt_not_leased_to_you_or_not_in_your_project_is_refused(app, store):
    project_id = make_project(store, prompts=2, overlap=1)
    other = make_project(store, name="other", labelers=("cat",))
    ann, ben = client_for(app, "ann"), client_for(app, "ben")
    ann_page = start(ann, project_id)
    ben_page = start(ben, project_id)
    ben_prompt, ben_shown = item_of(ben_page)
    stolen = {
        "csrf_token": csrf(ann_page),
        **{f"rank_{c}": str(i + 1) for i, c in enumerate(ben_shown)},
    }
    answer = ann.post(f"/p/{project_id}/label/{ben_prompt}", data=stolen)
    assert answer.status_code == 409 and "not handed to you" in answer.text
    assert ann.post(f"/p/{other}/label/{ben_prompt}", data=stolen).status_code == 404
    with store.session(read_only=True) as session:
        assert session.scalar(select(Ranking).limit(1)) is None


def test_skips_and_flags_retire_a_prompt_and_show_on_the_dashboard(app, store):
    project_id = make_project(store, prompts=2, overlap=3, labelers=("ann", "ben", "cat"))
    ann, ben, cat = (client_for(app, n) for n in ("ann", "ben", "cat"))
    page = start(ann, project_id)
    prompt_id, _ = item_of(page)
    no_reason = ann.post(
        f"/p/{project_id}/skip/{prompt_id}", data={"csrf_token": csrf(page), "kind": "flag"}
    )
    assert no_reason.status_code == 422
    ann.post(
        f"/p/{project_id}/skip/{prompt_id}",
        data={"csrf_token": csrf(page), "kind": "flag", "reason": "answers <cut> off"},
    )
    ben_page = start(ben, project_id)
    assert item_of(ben_page)[0] == prompt_id
    ben.post(
        f"/p/{project_id}/skip/{prompt_id}", data={"csrf_token": csrf(ben_page), "kind": "skip"}
    )
    cat_page = start(cat, project_id)
    assert item_of(cat_page)[0] != prompt_id  # retired after two labelers passed on it
    dashboard = client_for(app, "root").get(f"/admin/p/{project_id}")
    assert "1 retired" in dashboard.text and "answers &lt;cut&gt; off" in dashboard.text


def _closed(store: Store) -> dict[str, bool]:
    with store.session(read_only=True) as session:
        return {p.text: p.closed_at is not None for p in session.scalars(select(Prompt))}


def test_finished_prompts_are_closed_and_a_higher_overlap_opens_them_again(app, store):
    project_id = make_project(store, prompts=2, overlap=1, labelers=("ann", "ben"))
    ann, ben = client_for(app, "ann"), client_for(app, "ben")
    first, _ = item_of(start(ann, project_id))
    rank(ann, project_id, start(ann, project_id))
    assert _closed(store) == {"harm prompt 0": True, "harm prompt 1": False}
    admin = client_for(app, "root")
    page = admin.get(f"/admin/p/{project_id}")
    form = {"criterion": "harmlessness", "mode": "ranking", "overlap": "2"}
    admin.post(f"/admin/p/{project_id}/settings", data={"csrf_token": csrf(page), **form})
    assert _closed(store) == {"harm prompt 0": False, "harm prompt 1": False}
    assert item_of(start(ben, project_id))[0] == first  # open again: it needs a second label


def test_labels_stored_outside_the_app_count_before_their_prompt_is_closed(app, store):
    project_id = make_project(store, prompts=1, overlap=1)
    with store.session() as session:  # as `rlhfkit feedback import` stores a ranking
        prompt = session.scalar(select(Prompt))
        ranking = Ranking(prompt_id=prompt.id, labeler_id=labeler_id(store, "ben"))
        ranking.items = [
            RankingItem(completion_id=c.id, rank=i + 1) for i, c in enumerate(prompt.completions)
        ]
        session.add(ranking)
    assert "Nothing left" in start(client_for(app, "ann"), project_id).text
    assert _closed(store) == {"harm prompt 0": False}
    restarted = create_app(Settings(store_url=store.url))
    assert _closed(store) == {"harm prompt 0": True}
    restarted.state.web.store.close()


def test_thumbs_mode(app, store):
    project_id = make_project(store, mode="thumbs", overlap=1, prompts=1)
    ann = client_for(app, "ann")
    page = start(ann, project_id)
    prompt_id, shown = item_of(page)
    data = {"csrf_token": csrf(page), **{f"thumb_{c}": "up" for c in shown}}
    data[f"thumb_{shown[0]}"] = "down"
    assert ann.post(f"/p/{project_id}/label/{prompt_id}", data=data).status_code == 200
    with store.session(read_only=True) as session:
        labels = {t.completion_id: t.label for t in session.scalars(select(Thumb))}
    assert labels == {c: ("down" if c == shown[0] else "up") for c in shown}
    assert "Nothing left" in ann.get(f"/p/{project_id}/label").text


def test_thumbs_agreement_counts_up_down_contrasts(app, store):
    project_id = make_project(store, mode="thumbs", overlap=2, prompts=1, completions=3)
    votes = {"ann": ["up", "down", "down"], "ben": ["up", "up", "down"]}  # by completion order
    for name, labels in votes.items():
        client = client_for(app, name)
        page = start(client, project_id)
        prompt_id, shown = item_of(page)
        with store.session(read_only=True) as session:
            ids = [c.id for c in session.get(Prompt, prompt_id).completions]
        data = {"csrf_token": csrf(page), **{f"thumb_{c}": labels[ids.index(c)] for c in shown}}
        assert client.post(f"/p/{project_id}/label/{prompt_id}", data=data).status_code == 200
    summary = client_for(app, "root").get(f"/admin/p/{project_id}/agreement.json").json()
    # ann orders (0 > 1) and (0 > 2); ben orders (0 > 2) and (1 > 2): both order only (0, 2),
    # and the same way round
    assert summary["comparisons"] == 1 and summary["pairwise_agreement"] == 1.0
    assert {row["labeler"] for row in summary["labelers"]} == {"ann", "ben"}


# --- gold, adjudication and downloads -----------------------------------------------------


def _admin_ranks(admin, project_id: int, prompt_id: int, path: str, ranks: dict[int, int]):
    page = admin.get(f"/admin/p/{project_id}/prompt/{prompt_id}")
    data = {"csrf_token": csrf(page), **{f"rank_{c}": str(r) for c, r in ranks.items()}}
    return admin.post(f"/admin/p/{project_id}/{path}/{prompt_id}", data=data)


def test_gold_items_come_once_to_each_labeler_and_stay_out_of_overlap_and_pairs(app, store, cli):
    project_id = make_project(store, prompts=7, overlap=1, labelers=("ann", "ben"))
    admin = client_for(app, "root")
    with store.session(read_only=True) as session:
        prompts = session.scalars(select(Prompt).order_by(Prompt.id)).all()
        gold_prompt = prompts[-1]
        truth = {c.id: i + 1 for i, c in enumerate(gold_prompt.completions)}
    _admin_ranks(admin, project_id, gold_prompt.id, "gold", truth)
    clients = {name: client_for(app, name) for name in ("ann", "ben")}
    pages = {name: start(client, project_id) for name, client in clients.items()}
    got: dict[str, list[int]] = {"ann": [], "ben": []}
    while any(item_of(page) for page in pages.values()):  # the two take turns
        for name, client in clients.items():
            if item_of(pages[name]) is None:
                continue
            prompt_id, shown = item_of(pages[name])
            got[name].append(prompt_id)
            pages[name] = rank(client, project_id, pages[name], order=sorted(shown, reverse=True))
    assert got["ann"].count(gold_prompt.id) == 1 and got["ben"].count(gold_prompt.id) == 1
    assert "gold" not in start(client_for(app, "ann"), project_id).text.lower()
    ordinary = [p.id for p in prompts[:-1]]
    assert sorted(p for p in got["ann"] + got["ben"] if p != gold_prompt.id) == ordinary
    summary = admin.get(f"/admin/p/{project_id}/agreement.json").json()
    by_name = {row["labeler"]: row for row in summary["labelers"]}
    # both ranked the gold prompt in reverse id order: the exact opposite of the truth
    assert by_name["ann"]["gold_tau_b"] == pytest.approx(-1.0)
    assert by_name["ann"]["gold_pairwise"] == 0.0
    pairs = admin.get(f"/admin/p/{project_id}/pairs.jsonl").text
    assert gold_prompt.text not in pairs


def test_an_adjudication_replaces_the_consensus_in_the_pairs_and_downloads_match_the_cli(
    app, store, cli, tmp_path
):
    project_id = make_project(store, prompts=1, overlap=2)
    for name, reverse in (("ann", False), ("ben", True)):
        client = client_for(app, name)
        page = start(client, project_id)
        _, shown = item_of(page)
        rank(client, project_id, page, order=sorted(shown, reverse=reverse))
    admin = client_for(app, "root")
    view = admin.get(f"/admin/p/{project_id}/disagreements")
    assert "disagreement 100%" in view.text and "ann" in view.text and "ben" in view.text
    with store.session(read_only=True) as session:
        prompt = session.scalar(select(Prompt))
        ids = [c.id for c in prompt.completions]
    settled = {ids[1]: 1, ids[0]: 2, ids[2]: 3}
    answer = admin.post(
        f"/admin/p/{project_id}/adjudicate/{prompt.id}",
        data={"csrf_token": csrf(view), **{f"rank_{c}": str(r) for c, r in settled.items()}},
        follow_redirects=True,
    )
    assert "settled" in answer.text
    download = admin.get(f"/admin/p/{project_id}/pairs.jsonl?min_tau=0.2")
    out = tmp_path / "cli.jsonl"
    cli("feedback", "pairs", "--project", "harm", "--out", out, "--store", store.url)
    assert download.content == out.read_bytes()
    pairs = [json.loads(line) for line in download.text.splitlines()]
    texts = {c: t for c, t in zip(ids, [p.text for p in prompt.completions], strict=True)}
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {
        (texts[ids[1]], texts[ids[0]]),
        (texts[ids[1]], texts[ids[2]]),
        (texts[ids[0]], texts[ids[2]]),
    }
    assert {p["source"] for p in pairs} == {"adjudication"}
    history = admin.get(f"/admin/p/{project_id}/prompt/{prompt.id}")
    assert "Adjudications" in history.text and "by root" in history.text
    agreement = admin.get(f"/admin/p/{project_id}/agreement.csv")
    assert agreement.text.splitlines()[0].startswith("labeler,prompts,tau_b")
    assert len(agreement.text.splitlines()) == 3


def test_uploads_are_checked_whole_before_anything_is_stored(app, store):
    project_id = make_project(store, prompts=0)
    admin = client_for(app, "root")
    page = admin.get(f"/admin/p/{project_id}")
    good = json.dumps({"prompt": "q", "completions": ["x", "y"]})
    bad = json.dumps({"prompt": "r", "completions": ["x", "x"]})
    for body, message in (
        (f"{good}\n{bad}\n", "up.jsonl:2: &#39;completions&#39; holds the same text twice"),
        (f"{good}\nnot json\n", "up.jsonl:2: invalid JSON"),
        (json.dumps({"prompt": "q", "completions": ["a"], "ranks": [1]}), "feedback import"),
    ):
        answer = admin.post(
            f"/admin/p/{project_id}/upload",
            data={"csrf_token": csrf(page)},
            files={"file": ("up.jsonl", body.encode())},
        )
        assert answer.status_code == 400 and message in answer.text
    with store.session(read_only=True) as session:
        assert session.scalar(select(Prompt).limit(1)) is None
    ok = admin.post(
        f"/admin/p/{project_id}/upload",
        data={"csrf_token": csrf(page)},
        files={"file": ("up.jsonl", f"{good}\n".encode())},
    )
    assert ok.status_code == 200 and "added 1 prompts, 2 completions" in ok.text


def test_an_oversized_upload_is_refused(store_url):
    app = create_app(Settings(store_url=store_url, max_upload_bytes=1000))
    project_id = make_project(app.state.web.store, prompts=0)
    admin = client_for(app, "root")
    page = admin.get(f"/admin/p/{project_id}")
    line = json.dumps({"prompt": "q" * 600, "completions": ["x" * 600, "y"]})
    answer = admin.post(
        f"/admin/p/{project_id}/upload",
        data={"csrf_token": csrf(page)},
        files={"file": ("big.jsonl", line.encode() * 100)},
    )
    assert answer.status_code == 413 and "limited" in answer.text
    assert admin.get("/admin").status_code == 200  # still serving
    app.state.web.store.close()


def test_the_admin_copies_prompts_from_another_project_of_the_store(app, store):
    make_project(store, name="generated", prompts=3, labelers=())
    target = make_project(store, name="round1", prompts=0)
    admin = client_for(app, "root")
    page = admin.get(f"/admin/p/{target}")
    answer = admin.post(
        f"/admin/p/{target}/copy",
        data={"csrf_token": csrf(page), "source": "generated", "limit": "2"},
    )
    assert "added 2 prompts, 6 completions" in answer.text


def test_the_dashboard_lists_every_prompt_a_page_at_a_time(app, store, monkeypatch):
    monkeypatch.setattr("rlhfkit.web.admin.PROMPTS_A_PAGE", 2)
    project_id = make_project(store, prompts=5)
    admin = client_for(app, "root")
    listed, path = [], f"/admin/p/{project_id}"
    while path:
        page = admin.get(path)
        listed += re.findall(
            r"<li><a href=\"/admin/p/\d+/prompt/\d+\">\d+</a>: ([^<]*)</li>", page.text
        )
        more = re.search(r'id="more-prompts" href="([^"]+)"', page.text)
        path = more.group(1).replace("&amp;", "&") if more else None
    assert listed == [f"harm prompt {i}" for i in range(5)]


# --- untrusted text and who may reach what ------------------------------------------------


def test_untrusted_text_is_escaped_on_every_page(app, store):
    payload = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    with store.session() as session:
        accounts.add_user(session, payload, "labeler", PASSWORD)
    project_id = make_project(store, name="xss", prompts=0, labelers=(payload,), overlap=1)
    from rlhfkit.feedback.store import Project
    from rlhfkit.web.admin import add_prompts

    with store.session() as session:
        project = session.get(Project, project_id)
        project.instructions = f"# Hello\n{payload}\n[link](javascript:alert(3))"
        add_prompts(session, project, [(payload, [payload + " one", payload + " two"], None)])
    labeler = client_for(app, payload)
    pages = [labeler.get(f"/p/{project_id}/instructions"), start(labeler, project_id)]
    admin = client_for(app, "root")
    pages += [admin.get("/admin"), admin.get(f"/admin/p/{project_id}")]
    for page in pages:
        # no tag of the payload survives as a tag; its text may (escaped) appear
        assert "<script>alert" not in page.text and "<img" not in page.text
        assert 'href="javascript' not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[1].text


ROUTES = [
    ("GET", "/projects"),
    ("GET", "/p/{own}/label"),
    ("GET", "/p/{own}/instructions"),
    ("POST", "/p/{own}/label/{prompt}"),
    ("POST", "/p/{own}/skip/{prompt}"),
    ("GET", "/account"),
    ("GET", "/admin"),
    ("POST", "/admin/users"),
    ("POST", "/admin/projects"),
    ("GET", "/admin/p/{own}"),
    ("POST", "/admin/p/{own}/settings"),
    ("POST", "/admin/p/{own}/members"),
    ("POST", "/admin/p/{own}/copy"),
    ("GET", "/admin/p/{own}/agreement"),
    ("GET", "/admin/p/{own}/agreement.csv"),
    ("GET", "/admin/p/{own}/agreement.json"),
    ("GET", "/admin/p/{own}/heatmap.png"),
    ("GET", "/admin/p/{own}/pairs.jsonl"),
    ("GET", "/admin/p/{own}/disagreements"),
    ("GET", "/admin/p/{own}/prompt/{prompt}"),
    ("POST", "/admin/p/{own}/adjudicate/{prompt}"),
    ("POST", "/admin/p/{own}/gold/{prompt}"),
]


def _expected(who: str, method: str, path: str) -> set[int]:
    if who == "stranger":
        return {303}  # to the login page
    if path.startswith("/admin"):
        return {403} if who != "admin" else {200, 303, 400, 422}
    if who == "outsider" and "{own}" in path:
        return {404}
    if who == "admin" and "{own}" in path:
        return {404}  # an admin labels only where made a member, like anyone
    return {200, 303, 409, 422}


def test_every_route_answers_each_kind_of_visitor_as_it_should(app, store):
    project_id = make_project(store, prompts=2, labelers=("ann",))
    make_project(store, name="elsewhere", labelers=("zed",))
    with store.session(read_only=True) as session:
        prompt_id = session.scalar(select(Prompt.id).where(Prompt.project_id == project_id))
    visitors = {
        "stranger": client_for(app),
        "outsider": client_for(app, "zed"),
        "labeler": client_for(app, "ann"),
        "admin": client_for(app, "root"),
    }
    failures = []
    for who, client in visitors.items():
        token = csrf(client.get("/account" if who != "stranger" else "/login"))
        for method, template in ROUTES:
            path = template.format(own=project_id, prompt=prompt_id)
            if method == "GET":
                answer = client.get(path, follow_redirects=False)
            else:
                answer = client.post(path, data={"csrf_token": token}, follow_redirects=False)
            if answer.status_code not in _expected(who, method, template):
                failures.append(f"{who} {method} {path}: {answer.status_code}")
            if who == "stranger":
                assert answer.headers.get("location") == "/login"
    assert not failures, failures


def test_security_headers_on_every_page(app, store):
    make_project(store)
    for page in (client_for(app).get("/login"), client_for(app, "root").get("/admin")):
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "<script>" not in page.text.replace('<script src="/static/', "")


def test_the_secret_key_is_made_once_and_kept_in_the_store(store_url, monkeypatch):
    monkeypatch.delenv("RLHFKIT_SECRET_KEY", raising=False)
    store = Store(store_url)
    first, second = accounts.secret_key(store), accounts.secret_key(store)
    assert first == second and len(first) == 64
    monkeypatch.setenv("RLHFKIT_SECRET_KEY", "from the environment")
    assert accounts.secret_key(store) == b"from the environment"
    store.close()


def test_users_table_links_each_account_to_a_human_labeler(app, store):
    make_project(store)
    with store.session(read_only=True) as session:
        kinds = {u.labeler.name: (u.role, u.labeler.kind) for u in session.scalars(select(User))}
    assert kinds == {
        "root": ("admin", "human"),
        "ann": ("labeler", "human"),
        "ben": ("labeler", "human"),
    }
