"""A screenshot of the leaderboard page of a store, for the docs.

    python benchmarks/page_screenshot.py --store results/seeds.sqlite \
        --image docs/images/leaderboard-page.png [--section task-mqar] [--width 1280]

Writes the page to a temporary folder, opens it in headless Chromium (Debian's chromium,
driven by Playwright) and saves the viewport scrolled to ``--section`` (an element id:
task-TASK, runs, speed, compression).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from attnarena.arena.report.web import write_page
from attnarena.arena.store import Store


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--section", default=None)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp())
    page_path = write_page(Store(args.store, readonly=True), folder)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                    args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(page_path.as_uri())
        page.wait_for_selector("body[data-rendered]")
        if args.section:
            page.evaluate("id => document.getElementById(id).scrollIntoView()", args.section)
        page.wait_for_timeout(1000)
        page.screenshot(path=args.image)
        browser.close()
    print(f"wrote {args.image}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
