"""Screenshots of the web page's main views, for the README: docs/web-*.png.

Usage: python scripts/screenshots.py [--out docs] [--chromium PATH]

Starts a real ``rememory serve`` on 127.0.0.1 over a new store in a temporary directory, adds
examples/episodes.json through the REST API, and drives Debian's chromium with Playwright
(``pip install playwright``; ``apt-get install chromium``). Takes a minute or two.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect, sync_playwright

from rememory.server import KeyStore

REPO = Path(__file__).resolve().parent.parent
VIEWPORT = {"width": 1100, "height": 760}


def start_server(store: Path) -> tuple[subprocess.Popen[str], str]:
    exe = Path(sys.executable).parent / "rememory"
    proc = subprocess.Popen([str(exe), "--store", str(store), "serve", "--port", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        m = re.search(r"ReMemory listening on (http://127\.0\.0\.1:\d+)", "".join(lines))
        if m:
            return proc, m.group(1)
        time.sleep(0.1)
    proc.terminate()
    raise SystemExit("rememory serve did not start:\n" + "".join(lines))


def shoot(page: Page, out: Path, name: str, *, full_page: bool = True) -> None:
    page.screenshot(path=str(out / f"web-{name}.png"), full_page=full_page)
    print(f"wrote {out / f'web-{name}.png'}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="where the PNGs go")
    parser.add_argument("--chromium", default=shutil.which("chromium"), help="the chromium binary")
    args = parser.parse_args()
    if not args.chromium:
        raise SystemExit("No chromium found: apt-get install -y chromium, or pass --chromium PATH.")
    episodes = json.loads((REPO / "examples" / "episodes.json").read_text("utf-8"))

    with tempfile.TemporaryDirectory(prefix="rememory-shots-") as tmp:
        store = Path(tmp) / "store"
        with KeyStore.for_store(store) as keys:
            key = keys.create("alice")
        proc, url = start_server(store)
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=300) as c:
                res = c.post("/v1/memories", params={"wait": 60}, json={"episodes": episodes[:-1]})
                job = c.get(f"/v1/jobs/{res.json()['job_id']}", params={"wait": 60}).json()
                if job["status"] != "succeeded":
                    raise SystemExit(f"Adding the examples failed: {job}")
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
                page = browser.new_context(viewport=VIEWPORT).new_page()
                page.goto(url + "/")
                page.get_by_label("API key").fill(key)
                page.get_by_role("button", name="Sign in").click()
                expect(page.locator("#episodes tbody tr").first).to_be_visible()
                expect(page.locator("#timeline svg")).to_be_visible()
                shoot(page, args.out, "browse", full_page=False)

                page.goto(url + "/recall")
                page.get_by_label("Query").fill("walking on a bridge with Ilya")
                page.get_by_label("Top k").fill("3")
                page.get_by_role("button", name="Recall").click()
                expect(page.locator("#hits > li").first).to_be_visible()
                shoot(page, args.out, "recall")

                page.locator("#hits > li").first.locator("a").first.click()
                expect(page.locator("#episode-text")).not_to_be_empty()
                shoot(page, args.out, "episode")

                page.goto(url + "/add")
                last = episodes[-1]
                page.get_by_label("Keywords").fill(last["keywords"])
                page.get_by_label("Text").fill(last["text"])
                page.get_by_role("button", name="Add", exact=True).click()
                expect(page.locator("#job-status")).to_contain_text("Done", timeout=300_000)
                shoot(page, args.out, "add")

                page.goto(url + "/stats")
                page.get_by_role("button", name="Verify").click()
                expect(page.locator("#verify-status")).to_contain_text("All", timeout=300_000)
                shoot(page, args.out, "stats")

                narrow = browser.new_context(viewport={"width": 390, "height": 760}).new_page()
                narrow.goto(url + "/")
                narrow.get_by_label("API key").fill(key)
                narrow.get_by_role("button", name="Sign in").click()
                expect(narrow.locator("#episodes tbody tr").first).to_be_visible()
                narrow.screenshot(path=str(args.out / "web-narrow.png"))
                browser.close()
        finally:
            proc.terminate()
            proc.wait(60)


if __name__ == "__main__":
    main()
