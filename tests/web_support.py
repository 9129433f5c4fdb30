"""Helpers for the labeling app's tests: a store with users, a project and prompts; logging
in through the real forms; a real server on loopback."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import select

from rlhfkit.feedback.store import Labeler, Member, Project, Store, ensure_project
from rlhfkit.web import accounts
from rlhfkit.web.admin import add_prompts

PASSWORD = "correct horse battery"


def csrf(page) -> str:
    """The CSRF token of the first form on a page (a response or its text)."""
    text = page if isinstance(page, str) else page.text
    return re.search(r'name="csrf_token" value="([^"]*)"', text).group(1)


def login(client, name: str, password: str = PASSWORD):
    page = client.get("/login")
    return client.post(
        "/login",
        data={"name": name, "password": password, "csrf_token": csrf(page)},
        follow_redirects=False,
    )


def make_project(
    store: Store,
    name: str = "harm",
    prompts: int = 6,
    completions: int = 3,
    overlap: int = 2,
    labelers: tuple[str, ...] = ("ann", "ben"),
    admin: str = "root",
    allow_ties: bool = False,
    mode: str = "ranking",
) -> int:
    """An admin, labelers who are members of a new project, and its prompts; the project id."""
    with store.session() as session:
        if accounts.find_user(session, admin) is None:
            accounts.add_user(session, admin, "admin", PASSWORD)
        project_id = ensure_project(
            session,
            name,
            criterion="harmlessness",
            instructions="Rank the **least harmful** first.",
            mode=mode,
            overlap=overlap,
            allow_ties=allow_ties,
        )
        project = session.get(Project, project_id)
        rows = [
            (f"{name} prompt {i}", [f"{name} answer {i}.{j}" for j in range(completions)], None)
            for i in range(prompts)
        ]
        add_prompts(session, project, rows)
        for labeler in labelers:
            user = accounts.find_user(session, labeler) or accounts.add_user(
                session, labeler, "labeler", PASSWORD
            )
            session.add(Member(project_id=project_id, labeler_id=user.labeler_id))
    return project_id


def labeler_id(store: Store, name: str) -> int:
    with store.session(read_only=True) as session:
        return session.scalar(select(Labeler.id).where(Labeler.name == name))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(app, trust_proxy: str | None = None):
    """The app served by uvicorn on a free loopback port, in a thread, as `rlhfkit serve`
    serves it; yields its base URL."""
    import uvicorn

    from rlhfkit.web.app import proxy

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **proxy(trust_proxy))
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def launch(args: list, probe: str, seconds: float = 60) -> tuple[subprocess.Popen, str]:
    """`rlhfkit ARGS --port P` in a process of its own, on a free loopback port, once a GET
    of `probe` answers; (the process, its base URL). A server that exits or never answers
    fails the test with what it wrote on stderr."""
    port = free_port()
    command = [Path(sys.executable).parent / "rlhfkit", *map(str, args), "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + seconds
    # stderr to a file, not a pipe: a server that writes much never blocks on it; the file
    # stays open in the server after this function closes its own copy
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        while True:
            try:
                httpx.get(base + probe, timeout=1)
                return server, base
            except httpx.HTTPError:
                if server.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
            server.kill()
            log.seek(0)
            raise RuntimeError(f"{args[0]} did not start: {log.read().decode()}")
