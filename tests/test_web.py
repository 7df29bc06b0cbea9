"""The web page in a real browser: Debian's chromium, driven by Playwright, against a real `rememory serve`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from rememory.server import KeyStore
from rememory.server.rest import RecallRequest
from rememory.server.web import VIEWS

pytestmark = pytest.mark.model

BIN = Path(sys.executable).parent / "rememory"
JOB_TIMEOUT_MS = 120_000  # training waits on a shared CPU; a wait, not a timed assert
HOSTILE = "Note: <script>alert(1)</script> then </memory><img src=x id=pwned> & done."


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("The web tests need Debian's chromium: `make test` installs it (or: apt-get install -y chromium).")
    return path


class Served:
    """``rememory --store DIR serve --port 0 [ARGS]`` as a real process on 127.0.0.1."""

    def __init__(self, store: Path, *args: str):
        self.proc = subprocess.Popen([str(BIN), "--store", str(store), "serve", "--port", "0", *args],
                                     env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)  # fmt: skip
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()  # type: ignore[arg-type]
        deadline = time.monotonic() + 120
        while True:
            m = re.search(r"ReMemory listening on (http://127\.0\.0\.1:\d+)", "".join(self.stderr))
            if m:
                self.url = m.group(1)
                return
            assert self.proc.poll() is None and time.monotonic() < deadline, "".join(self.stderr)
            time.sleep(0.05)

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=180)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, dict[str, str]]]:
    store = tmp_path_factory.mktemp("web") / "store"
    with KeyStore.for_store(store) as keys:
        key = {"alice": keys.create("alice"), "bob": keys.create("bob")}
    server = Served(store)
    yield server, key
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # Root in CI (and in containers) needs --no-sandbox; Playwright's own browser download is not used.
        b = pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):  # type: ignore[no-untyped-def]
    """A fresh tab (its own sessionStorage) that records any dialog a script opens, and any page error."""
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    page.dialogs = []
    page.errors = []

    def on_dialog(dialog) -> None:  # type: ignore[no-untyped-def]
        page.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    # A Content-Security-Policy violation is reported on the console; so are failed loads.
    page.on("console", lambda msg: page.errors.append(msg.text) if "Content Security Policy" in msg.text else None)
    page.urls = []
    page.on("request", lambda request: page.urls.append(request.url))
    yield page
    context.close()


def sign_in(page, url: str, key: str) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    page.goto(url + "/")
    expect(page.get_by_label("API key")).to_be_visible()
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#main")).to_be_visible()


def go(page, view: str) -> None:  # type: ignore[no-untyped-def]
    """Opens a view from the navigation and waits until its script has set it up (it then shows ``main``)."""
    from playwright.sync_api import expect

    page.get_by_role("navigation").get_by_role("link", name=view).click()
    expect(page.locator("main h1")).to_have_text(view)
    expect(page.locator("#main")).to_be_visible()


def add_one(page, url: str, keywords: str, text: str) -> str:  # type: ignore[no-untyped-def]
    """Adds an episode through the Add view's form and waits for its job; returns its id."""
    from playwright.sync_api import expect

    go(page, "Add")
    page.get_by_label("Keywords").fill(keywords)
    page.get_by_label("Text").fill(text)
    page.get_by_role("button", name="Add", exact=True).click()
    expect(page.locator("#job-status")).to_have_text("Done: 1 episode added.", timeout=JOB_TIMEOUT_MS)
    return page.locator("#job-ids a").inner_text()


def test_sign_in_add_recall_explain_forget(served, page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    server, key = served
    page.goto(server.url + "/")
    page.get_by_label("API key").fill("rmk_000000000000_" + "x" * 43)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#sign-in-error")).to_contain_text("Invalid or revoked API key")
    sign_in(page, server.url, key["alice"])
    assert page.evaluate("sessionStorage.length") == 1 and key["alice"] not in page.url

    text = "Мы шли с Ильёй через мост, и река была как второе небо — 7 ноября."
    ep_id = add_one(page, server.url, "Ilya, bridge, river", text)
    add_one(page, server.url, "tea, garden", "Green tea in the garden at noon, with the neighbours' cat.")

    go(page, "Recall")
    page.get_by_label("Query").fill("Илья, мост и река")
    page.get_by_label("Top k").fill("2")
    page.get_by_role("button", name="Recall").click()
    expect(page.locator("#recall-status")).to_have_text("2 hits, best first.")
    first = page.locator("#hits > li").filter(has=page.get_by_role("link", name=ep_id))
    expect(first.locator("pre")).to_have_text(text)
    assert float(first.locator(".score").inner_text()) > 0
    if "explain" in RecallRequest.model_fields:
        rows = first.locator("table.explain tr")
        expect(rows.first).to_be_visible()
        names = rows.locator("th").all_inner_texts()
        assert any(n.startswith("bm25") for n in names) and any(n.startswith("dense") for n in names), names
        total = sum(float(v) for v in rows.locator("td.num").all_inner_texts())
        assert total == pytest.approx(float(first.locator(".score").inner_text()), abs=1e-3 * len(names))
    else:
        # This branch's REST recall has no `explain` yet (it comes with issue 15's ranking change): the page
        # then asks for none and shows none. Once it is merged, the assertions above run instead.
        assert first.locator("table.explain").count() == 0

    first.get_by_role("link", name=ep_id).click()
    expect(page.locator("#episode-text")).to_have_text(text)
    expect(page.locator("#episode-verified")).to_contain_text("✓")
    expect(page.locator("#after")).to_contain_text("tea, garden")
    size = page.locator("#episode-size").inner_text()
    assert f"text {len(text.encode())} B" in size, size
    page.get_by_role("button", name="Forget…").click()
    page.get_by_role("button", name="Forget it").click()
    expect(page.locator("#episode-status")).to_have_text(f"Forgotten: {ep_id}.")

    go(page, "Browse")
    expect(page.locator("#browse-status")).to_have_text("1 episode.")
    assert ep_id not in page.locator("#episodes").inner_text()
    with server.client(key["alice"]) as c:
        assert c.get(f"/v1/memories/{ep_id}").status_code == 404
    assert page.errors == []
    # The page used only its own views and files and the public REST API; the key went in no URL, no cookie.
    paths = {urlsplit(u).path for u in page.urls}
    assert all(p in VIEWS or p.startswith(("/static/", "/v1/")) for p in paths), paths
    assert {"/v1/browse", "/v1/recall", "/v1/memories"} <= paths
    assert not any(key["alice"] in u for u in page.urls) and page.context.cookies() == []


def test_a_second_key_sees_none_of_the_first_keys_episodes(served, page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    server, key = served
    with server.client(key["alice"]) as alice:
        res = alice.post("/v1/memories", params={"wait": 60},
                         json={"keywords": "PIN", "text": "Alice's PIN is 4711.", "id": "alice-pin"})  # fmt: skip
        assert res.json()["job"]["status"] == "succeeded", res.text
    sign_in(page, server.url, key["bob"])
    expect(page.locator("#browse-status")).to_have_text("No episodes yet. Add some.")
    go(page, "Recall")
    page.get_by_label("Query").fill("Alice's PIN")
    page.get_by_role("button", name="Recall").click()
    expect(page.locator("#recall-status")).to_have_text("Nothing recalled.")
    page.goto(server.url + "/episode?id=alice-pin")
    expect(page.locator("#episode-error")).to_contain_text("No memory with id 'alice-pin'")
    assert "4711" not in page.content()


def test_hostile_text_renders_as_text_and_runs_nothing(served, page) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    server, key = served
    with server.client(key["alice"]) as alice:
        res = alice.post("/v1/memories", params={"wait": 60},
                         json={"keywords": "<b>bold</b>", "text": HOSTILE, "id": "<script>x</script>"})  # fmt: skip
        assert res.json()["job"]["status"] == "succeeded", res.text
    response = page.goto(server.url + "/")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    sign_in(page, server.url, key["alice"])
    page.get_by_label("Filter").fill("</memory>")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#browse-status")).to_have_text("1 episode match.")
    expect(page.locator("#episodes tbody")).to_contain_text("<b>bold</b>")
    page.locator("#episodes tbody a").first.click()
    expect(page.locator("#episode-text")).to_have_text(HOSTILE)
    expect(page.locator("#episode-id")).to_have_text("<script>x</script>")
    go(page, "Recall")
    page.get_by_label("Query").fill("script alert memory")
    page.get_by_role("button", name="Recall").click()
    expect(page.locator("#hits")).to_contain_text(HOSTILE)
    assert page.locator("#pwned").count() == 0 and page.locator("main b").count() == 0
    assert page.dialogs == [] and page.errors == []


def test_file_errors_name_the_item_and_verify_reports(served, page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    server, key = served
    with server.client(key["alice"]) as alice:
        res = alice.post("/v1/memories", params={"wait": 60}, json={"keywords": "x", "text": "Stored today."})
        assert res.json()["job"]["status"] == "succeeded", res.text
    sign_in(page, server.url, key["alice"])
    go(page, "Add")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"keywords": "a", "text": "fine"}\n{"keywords": "b", "text": "broken"\n', encoding="utf-8")
    page.get_by_label("Drop a file here, or choose one").set_input_files(str(bad))
    expect(page.locator("#add-error")).to_contain_text("bad.jsonl, line 2: not valid JSON")
    big = tmp_path / "big.json"
    big.write_text('[{"text": "ok"}, {"text": "' + "x" * 20000 + '"}]', encoding="utf-8")
    page.get_by_label("Drop a file here, or choose one").set_input_files(str(big))
    expect(page.locator("#add-error")).to_contain_text("big.json")
    expect(page.locator("#add-error")).to_contain_text("item 2")

    go(page, "Stats")
    expect(page.locator("#stats")).to_contain_text("mlp-cell")
    page.get_by_role("button", name="Verify").click()
    expect(page.locator("#verify-status")).to_contain_text("✓ All", timeout=JOB_TIMEOUT_MS)
    go(page, "Browse")
    expect(page.locator("#timeline svg rect")).to_have_count(1)


def test_no_auth_needs_no_sign_in(tmp_path: Path, browser) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    server = Served(tmp_path / "store", "--no-auth")
    try:
        context = browser.new_context(viewport={"width": 380, "height": 700})  # a narrow window
        page = context.new_page()
        page.goto(server.url + "/stats")
        expect(page.locator("#stats")).to_contain_text("Episodes")
        assert page.locator("#sign-in").is_hidden()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # nothing sticks out
        # The keyboard alone: the query field has focus on the Recall view, Enter submits, Tab reaches the nav.
        page.goto(server.url + "/recall")
        expect(page.locator("#query")).to_be_focused()
        page.keyboard.type("anything at all")
        page.keyboard.press("Enter")
        expect(page.locator("#recall-status")).to_have_text("Nothing recalled.")
        page.keyboard.press("Shift+Tab")  # back to the last link of the navigation
        assert page.evaluate("document.activeElement.textContent") == "Stats"
        context.close()
    finally:
        server.stop()
