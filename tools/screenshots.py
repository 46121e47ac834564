"""``python -m tools.screenshots``: the README's pictures, taken from the demo itself.

Runs the demo scenario unpaced (``curbwatch demo`` without the waiting), restarts its stack,
signs in as the demo operator in Debian's headless Chromium and photographs the review queue and
the case page of the parked car on ``street-1``; the annotated evidence frame of that case is
copied as the edge made it. Writes ``docs/images/review-queue.jpg``, ``review-case.jpg`` and
``evidence-annotated.jpg``. The event names are Chinese and English: without a CJK font (Debian:
``fonts-wqy-zenhei``) Chromium draws the Chinese as empty boxes.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from sqlalchemy import select

from curbwatch.broker import free_port
from curbwatch.demo import run_stack_demo
from curbwatch.schema.events import EvidenceRole
from curbwatch.server.db import make_engine, make_session_factory
from curbwatch.server.evidence import EvidenceStore
from curbwatch.server.tables import Case, CaseEvent, Event
from curbwatch.stack import DEMO_LOGINS, LocalStack
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGES = REPO_ROOT / "docs" / "images"
CAMERA, ZONE = "street-1", "kerb"
JPEG_QUALITY = 85


def parked_car_case(database_url: str) -> tuple[str, str]:
    """The id of the parked car's case on ``street-1`` and the sha256 of its annotated start frame."""
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            case = session.scalars(select(Case).where(Case.camera_id == CAMERA, Case.zone == ZONE)).one()
            documents = session.scalars(
                select(Event.document)
                .join(CaseEvent, CaseEvent.event_id == Event.event_id)
                .where(CaseEvent.case_id == case.id)
                .order_by(Event.ts)
            )
            for document in documents:
                for item in document.get("evidence", []):
                    if item.get("role") == EvidenceRole.ANNOTATED.value:
                        return case.id, item["sha256"]
    finally:
        engine.dispose()
    raise SystemExit(f"the {CAMERA}/{ZONE} case has no annotated evidence")


def photograph(url: str, case_id: str, out: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    login = next(login for login in DEMO_LOGINS if login.role == "operator")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(f"{url}/queue")
            page.fill("input[name=username]", login.username)
            page.fill("input[name=password]", login.password)
            page.click("button[type=submit]")
            expect(page.locator("#case-rows tr").first).to_be_visible()
            for thumbnail in page.locator("#case-rows img").all():
                expect(thumbnail).not_to_have_js_property("naturalWidth", 0)
            page.screenshot(path=str(out / "review-queue.jpg"), type="jpeg", quality=JPEG_QUALITY)
            page.goto(f"{url}/cases/{case_id}?queue=1")
            for image in page.locator("main img").all():
                image.scroll_into_view_if_needed()
                expect(image).not_to_have_js_property("naturalWidth", 0)
            page.screenshot(
                path=str(out / "review-case.jpg"), type="jpeg", quality=JPEG_QUALITY, full_page=True
            )
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "build" / "screenshots")
    parser.add_argument("--out", type=Path, default=IMAGES)
    args = parser.parse_args()
    # A fresh server each time (the rendered streets in workdir/streets are kept and reused).
    for stale in ("curbwatch.db", "outbox.sqlite"):
        (args.workdir / stale).unlink(missing_ok=True)
    for stale in ("evidence", "server-evidence"):
        shutil.rmtree(args.workdir / stale, ignore_errors=True)
    result = run_stack_demo(args.workdir, http_port=free_port(), realtime=False, keep_serving=False)
    print(f"demo: {result.events} events, {result.cases} cases")
    case_id, sha256 = parked_car_case(result.database_url)
    args.out.mkdir(parents=True, exist_ok=True)
    with LocalStack(args.workdir, http_port=free_port()) as stack:
        assert stack.settings is not None
        shutil.copyfile(
            EvidenceStore(stack.settings.evidence_dir).path_of(sha256), args.out / "evidence-annotated.jpg"
        )
        photograph(stack.url, case_id, args.out)
    print(f"wrote {', '.join(p.name for p in sorted(args.out.glob('*.jpg')))} in {args.out}")


if __name__ == "__main__":
    main()
