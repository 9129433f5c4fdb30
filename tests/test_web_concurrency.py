"""Many labelers at once over real HTTP, against a server on loopback: every acknowledged
ranking is stored exactly once, no prompt goes past its overlap, the server keeps answering."""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from collections import Counter

import httpx
import pytest
from sqlalchemy import select

from rlhfkit.feedback.store import Labeler, Ranking, Store
from rlhfkit.web.app import Settings, create_app
from web_support import PASSWORD, csrf, launch, login, make_project, running_server

LABELERS = 20
PROMPTS = 24
OVERLAP = 3


def label_everything(base_url: str, name: str, project_id: int, acknowledged, errors) -> None:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        assert login(client, name).status_code == 303
        page = client.get(f"/p/{project_id}/label", follow_redirects=True)
        page = client.post(
            f"/p/{project_id}/instructions",
            data={"csrf_token": csrf(page)},
            follow_redirects=True,
        )
        submitted = 0
        while True:
            if page.status_code >= 500:
                errors.append(f"{name}: {page.status_code}")
                return
            found = re.search(r'action="/p/\d+/label/(\d+)"', page.text)
            if not found:
                return
            prompt_id = int(found.group(1))
            ids = re.findall(r'name="rank_(\d+)"', page.text)
            data = {
                "csrf_token": csrf(page),
                **{f"rank_{c}": str(i + 1) for i, c in enumerate(ids)},
            }
            answer = client.post(f"/p/{project_id}/label/{prompt_id}", data=data)
            if answer.status_code != 303:
                errors.append(f"{name}: {answer.status_code} on prompt {prompt_id}")
                return
            acknowledged.append((name, prompt_id))
            submitted += 1
            if submitted % 3 == 0:  # a retry of the same submission: stores nothing more
                again = client.post(f"/p/{project_id}/label/{prompt_id}", data=data)
                if again.status_code != 303:
                    errors.append(f"{name}: retry answered {again.status_code}")
            page = client.get(answer.headers["location"])


@pytest.mark.slow
def test_twenty_labelers_at_once_lose_nothing_and_never_pass_the_overlap(store_url):
    app = create_app(Settings(store_url=store_url))
    store = app.state.web.store
    names = tuple(f"labeler{i:02d}" for i in range(LABELERS))
    project_id = make_project(store, prompts=PROMPTS, overlap=OVERLAP, labelers=names)
    acknowledged: list[tuple[str, int]] = []
    errors: list[str] = []
    with running_server(app) as url:
        threads = [
            threading.Thread(
                target=label_everything, args=(url, name, project_id, acknowledged, errors)
            )
            for name in names
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert not any(t.is_alive() for t in threads)
        assert httpx.get(f"{url}/login").status_code == 200
    assert errors == []
    with store.session(read_only=True) as session:
        stored = session.execute(
            select(Labeler.name, Ranking.prompt_id).join(Labeler, Ranking.labeler_id == Labeler.id)
        ).all()
    assert sorted(stored) == sorted(acknowledged)  # each acknowledged one, once; nothing else
    per_prompt = Counter(prompt for _, prompt in stored)
    assert len(per_prompt) == PROMPTS and set(per_prompt.values()) == {OVERLAP}
    store.close()


@pytest.mark.slow
def test_a_server_killed_mid_load_loses_no_acknowledged_ranking(tmp_path):
    """`rlhfkit serve` in a process of its own, killed with SIGKILL while labelers submit:
    every ranking it acknowledged before dying is in the store."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    names = tuple(f"labeler{i:02d}" for i in range(8))
    project_id = make_project(store, prompts=200, overlap=2, labelers=names)
    store.close()
    server, base = launch(["serve", "--store", url], "/login")
    acknowledged: list[tuple[str, int]] = []
    errors: list[str] = []

    def keep_labeling(name: str) -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server died under this labeler
            label_everything(base, name, project_id, acknowledged, errors)

    threads = [threading.Thread(target=keep_labeling, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.send_signal(signal.SIGKILL)
    server.wait(30)
    for thread in threads:
        thread.join(60)
    assert len(acknowledged) >= 40
    store = Store(url)
    with store.session(read_only=True) as session:
        stored = set(
            session.execute(
                select(Labeler.name, Ranking.prompt_id).join(
                    Labeler, Ranking.labeler_id == Labeler.id
                )
            ).all()
        )
    store.close()
    assert set(acknowledged) <= stored


@pytest.mark.parametrize("trusted, secure", [(None, False), ("127.0.0.1", True)])
def test_proxy_headers_count_only_from_a_trusted_proxy(tmp_path, trusted, secure):
    app = create_app(Settings(store_url=f"sqlite:///{tmp_path / 'store.db'}"))
    make_project(app.state.web.store)
    with running_server(app, trust_proxy=trusted) as url, httpx.Client(base_url=url) as client:
        page = client.get("/login")
        answer = client.post(
            "/login",
            data={"name": "ann", "password": PASSWORD, "csrf_token": csrf(page)},
            headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"},
        )
        assert answer.status_code == 303
        assert ("Secure" in answer.headers["set-cookie"]) is secure
    app.state.web.store.close()
