"""Makes docs/chat-page.png: `srlm serve CKPT` in its own process, the chat page in headless chromium, one
question asked, the reasoning block opened, a screenshot taken.

    python docs/chat_page_screenshot.py runs/default/final --question "..." --out docs/chat-page.png
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time

import httpx
from playwright.sync_api import sync_playwright

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt")
    p.add_argument("--question", default="Mia has 14 stickers. She gets 9 more and gives 5 away. How many are left?")
    p.add_argument("--out", default="docs/chat-page.png")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "srlm.cli", "serve", args.ckpt, "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1100, "height": 560})
            page.goto(url + "/")
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "256")
            page.fill("#prompt", args.question)
            page.press("#prompt", "Enter")
            page.wait_for_selector(".msg.assistant[data-finished]", timeout=120_000)
            page.evaluate("document.querySelector('details.reasoning').open = true")
            page.screenshot(path=args.out)
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
