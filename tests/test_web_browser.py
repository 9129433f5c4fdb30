"""The labeling app in a real headless Chromium (Debian's, driven by Playwright): a whole
labeling round by keyboard, and untrusted text that must stay text."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

from rlhfkit.web.app import Settings, create_app
from web_support import PASSWORD, running_server

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("RLHFKIT_CHROMIUM", "/usr/bin/chromium")
# Chromium's background services try to reach Google at every start; this machine's closed
# network refuses them, so they are switched off.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        if os.environ.get("RLHFKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"RLHFKIT_REQUIRE_BROWSER=1 but there is no Chromium at {CHROMIUM}")
        pytest.skip(f"no Chromium at {CHROMIUM} (.ci/chromium.sh installs Debian's)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def served(tmp_path):
    app = create_app(Settings(store_url=f"sqlite:///{tmp_path / 'store.db'}"))
    with running_server(app) as url:
        yield app, url
    app.state.web.store.close()


def screenshot_dir(tmp_path: Path) -> Path:
    """Where the screenshots go: RLHFKIT_SCREENSHOTS (docs/img makes those of
    docs/tutorial-people.md), or a temporary folder."""
    folder = Path(os.environ.get("RLHFKIT_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def log_in(page, url: str, name: str, password: str = PASSWORD) -> None:
    page.goto(f"{url}/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def start_labeling(page) -> None:
    """Press Enter on the instructions page: its autofocused button says they were read.
    Autofocus lands when the page is next drawn, which on a busy machine can be after the
    load event, so wait for the focus first."""
    page.wait_for_function("document.activeElement && document.activeElement.id === 'start'")
    with page.expect_navigation():
        page.keyboard.press("Enter")


def test_the_playwright_release_drives_this_chromium(browser):
    major = int(browser.version.split(".")[0])
    page = browser.new_page()
    page.set_content("<button onclick=\"this.textContent='clicked'\">x</button>")
    page.click("button")
    assert page.text_content("button") == "clicked"
    assert major >= 120, f"Chromium {browser.version} is older than this Playwright drives"
    page.close()


def test_a_labeling_round_by_keyboard_from_new_project_to_pairs(browser, served, tmp_path, cli):
    app, url = served
    store = app.state.web.store
    from rlhfkit.web.accounts import create_user

    create_user(store, "root", "admin", PASSWORD)
    shots = screenshot_dir(tmp_path)
    admin = browser.new_page(viewport={"width": 1100, "height": 900})
    log_in(admin, url, "root")
    assert admin.url.endswith("/admin")

    # the admin makes two labelers and a project, uploads prompts and assigns the labelers
    for name in ("ann", "ben"):
        admin.click("summary:has-text('New user')")
        admin.fill("#new-user input[name=name]", name)
        admin.fill("#new-user input[name=password]", PASSWORD)
        admin.click("#new-user button[type=submit]")
    # with no project yet, the new-project form is open
    admin.fill("#new-project input[name=name]", "helpful")
    admin.fill("#new-project input[name=criterion]", "helpfulness")
    admin.fill(
        "#new-project textarea[name=instructions]",
        "# How to rank\nPut the **most helpful** answer first.",
    )
    admin.fill("#new-project input[name=overlap]", "2")
    admin.click("#new-project button[type=submit]")
    upload = tmp_path / "prompts.jsonl"
    prompts = [
        (
            "How do I boil an egg?",
            ["Put it in boiling water for 8 minutes.", "Eggs are oval.", "No."],
        ),
        ("Name a prime number.", ["7", "Numbers are fun.", "I cannot say."]),
        ("What is the capital of France?", ["Paris.", "France is in Europe.", "Rome."]),
    ]
    upload.write_text(
        "".join(json.dumps({"prompt": p, "completions": c}) + "\n" for p, c in prompts)
    )
    admin.set_input_files("#upload input[type=file]", str(upload))
    admin.click("#upload button[type=submit]")
    assert "added 3 prompts, 9 completions" in admin.text_content("main")
    admin.click("text=Back")
    for name in ("ann", "ben"):
        admin.check(f"#members label:has-text('{name}') input")
    admin.click("#members button[type=submit]")
    project_url = admin.url

    # each labeler reads the instructions and ranks every item with the keyboard alone
    # Both rank the answers as listed above (most helpful first), each card by its number key
    # in the order shown to them, except that ben reverses the prime-number prompt; ben also
    # first presses a wrong key and undoes it with Z.
    answers = dict(prompts)
    for name in ("ann", "ben"):
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        log_in(page, url, name)
        page.goto(f"{url}/projects")
        page.click("a:has-text('helpful')")
        assert "most helpful" in page.text_content("article")
        start_labeling(page)
        ranked = 0
        while page.query_selector("#label-form"):
            if name == "ann" and ranked == 0:
                page.screenshot(path=str(shots / "labeling.png"), full_page=True)
            best_first = answers[page.text_content("#prompt")]
            shown = [page.text_content(f"#cards li:nth-child({i}) pre") for i in range(1, 4)]
            wanted = [str(best_first.index(text) + 1) for text in shown]
            if name == "ben" and best_first[0] == "7":
                wanted = [str(4 - int(w)) for w in wanted]
            if name == "ben":
                page.keyboard.press(wanted[1])
                page.keyboard.press("z")
            for key in wanted:
                page.keyboard.press(key)
            values = [page.input_value(f"#cards li:nth-child({i}) input") for i in range(1, 4)]
            assert values == wanted, (name, ranked, shown)
            with page.expect_navigation():
                page.keyboard.press("Enter")
            ranked += 1
        assert page.is_visible("#all-done") and ranked == 3
        page.close()

    # the admin reads the agreement, settles a disagreement and downloads the pairs
    admin.goto(project_url)
    admin.screenshot(path=str(shots / "dashboard.png"), full_page=True)
    admin.click("#agreement-link")
    rows = admin.locator("#agreement tbody tr")
    assert rows.count() == 2
    admin.goto(project_url)
    admin.click("#disagreements-link")
    first = admin.locator("section.disagreement").first
    assert "disagreement 100%" in first.text_content()
    assert "Name a prime number." in first.text_content()
    inputs = first.locator("input[type=number]")
    for i in range(inputs.count()):
        inputs.nth(i).fill(str(i + 1))
    admin.screenshot(path=str(shots / "disagreements.png"), full_page=True)
    with admin.expect_navigation():
        first.locator("button[type=submit]").click()
    assert admin.locator("section.disagreement .settled").count() == 1
    with admin.expect_download() as download_info:
        admin.goto(project_url)
        admin.click("#pairs-link")
    downloaded = Path(download_info.value.path()).read_bytes()
    out = tmp_path / "cli-pairs.jsonl"
    cli("feedback", "pairs", "--project", "helpful", "--out", out, "--store", store.url)
    assert downloaded == out.read_bytes()
    sources = {json.loads(line)["source"] for line in downloaded.splitlines()}
    assert sources == {"ranking", "adjudication"}
    admin.close()


def test_ranking_by_drag_and_drop_then_undo_and_submit(browser, served):
    app, url = served
    store = app.state.web.store
    from sqlalchemy import select

    from rlhfkit.feedback.store import Completion, Ranking
    from web_support import make_project

    project_id = make_project(store, prompts=1, completions=4, overlap=1, labelers=("ann",))
    page = browser.new_page(viewport={"width": 1000, "height": 1200})
    log_in(page, url, "ann")
    page.goto(f"{url}/p/{project_id}/label")
    start_labeling(page)

    def order() -> list[str]:
        return [page.text_content(f"#cards li:nth-child({i}) pre") for i in range(1, 5)]

    def ranks() -> list[str]:
        return [page.input_value(f"#cards li:nth-child({i}) input") for i in range(1, 5)]

    def drag(source: int, target: int, fraction: float) -> None:
        """Drag card `source` by the mouse onto card `target`, at `fraction` of its height."""
        start = page.locator(f"#cards li:nth-child({source})").bounding_box()
        end = page.locator(f"#cards li:nth-child({target})").bounding_box()
        page.mouse.move(start["x"] + 40, start["y"] + start["height"] / 2)
        page.mouse.down()
        page.mouse.move(end["x"] + 40, end["y"] + end["height"] * fraction, steps=8)
        page.mouse.up()

    shown = order()
    # the last card dropped on the top edge of the first: it becomes rank 1, the rest follow
    drag(4, 1, 0.05)
    assert order() == [shown[3], *shown[:3]]
    assert ranks() == ["1", "2", "3", "4"]
    # the second card dropped on the bottom edge of the third, then that undone with Z
    drag(2, 3, 0.95)
    assert order() == [shown[3], shown[1], shown[0], shown[2]]
    assert ranks() == ["1", "2", "3", "4"]
    page.keyboard.press("z")
    assert order() == [shown[3], *shown[:3]] and ranks() == ["1", "2", "3", "4"]
    with page.expect_navigation():
        page.click("#submit")
    assert page.is_visible("#all-done")
    with store.session(read_only=True) as session:
        ranking = session.scalar(select(Ranking))
        stored = {session.get(Completion, i.completion_id).text: i.rank for i in ranking.items}
    assert stored == {shown[3]: 1, shown[0]: 2, shown[1]: 3, shown[2]: 4}
    page.close()


PAYLOAD = (
    '<script>alert(1)</script><img src="/probe-img" onerror="alert(2)"><svg onload="alert(3)">'
)


def test_untrusted_text_shows_as_text_and_runs_nothing(browser, served):
    app, url = served
    store = app.state.web.store
    from web_support import make_project

    project_id = make_project(store, name="xss", prompts=0, labelers=(PAYLOAD,), overlap=1)
    from rlhfkit.feedback.store import Project
    from rlhfkit.web.admin import add_prompts

    with store.session() as session:
        project = session.get(Project, project_id)
        project.instructions = f"{PAYLOAD}\n\n[click](javascript:alert(4))"
        add_prompts(session, project, [(PAYLOAD, [PAYLOAD + " A", PAYLOAD + " B"], None)])
    events: list[str] = []

    def watched_page():
        """A page in a context of its own that records any dialog and any request for
        something other than the app's own pages and files."""
        page = browser.new_page()
        page.on("dialog", lambda d: (events.append(f"dialog {d.message}"), d.dismiss()))

        def request(req):
            path = urlparse(req.url).path
            own = path in {"/login", "/", "/projects"} or path.startswith(
                ("/static/", "/p/", "/admin")
            )
            if not own:
                events.append(f"request {req.url}")

        page.on("request", request)
        return page

    page = watched_page()
    log_in(page, url, PAYLOAD)
    page.goto(f"{url}/p/{project_id}/instructions")
    assert PAYLOAD in page.text_content("main")
    start_labeling(page)
    assert page.text_content("#prompt") == PAYLOAD
    assert PAYLOAD + " A" in page.text_content("#cards")
    assert PAYLOAD in page.text_content("header")  # the labeler's name
    assert page.locator("script:not([src])").count() == 0
    page.close()
    page = watched_page()
    log_in(page, url, "root")
    for path in ("/admin", f"/admin/p/{project_id}", f"/admin/p/{project_id}/prompt/1"):
        page.goto(url + path)
        page.wait_for_load_state("networkidle")
        assert page.locator("script:not([src])").count() == 0
    assert PAYLOAD in page.text_content("main")
    assert events == []
    page.close()
