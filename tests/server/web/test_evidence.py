"""Evidence serving: sign-in or a signed link, restricted originals, and paths that never leave the store."""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from curbwatch.server.evidence import (
    EvidenceNotFound,
    EvidenceOutsideStore,
    EvidenceStore,
    EvidenceStoreError,
)
from curbwatch.server.tables import CaseCheck, Evidence
from curbwatch.server.web.api.evidence import LINK_SALT, evidence_link
from tests.server.factories import jpeg_like
from tests.server.web.case_factory import NOW, api_client, seed_case
from tests.server.web.conftest import WebApp

SECRET = b"root:x:0:0:root:/root:/bin/bash\n"


@pytest.fixture
def outside(tmp_path: Path) -> tuple[str, Path]:
    """A file outside the evidence store, named by its sha256."""
    target = tmp_path / "outside" / "passwd"
    target.parent.mkdir()
    target.write_bytes(SECRET)
    return hashlib.sha256(SECRET).hexdigest(), target


def test_every_role_gets_annotated_frames_and_crops(web: WebApp) -> None:
    case = seed_case(web)
    for role in ("operator", "dispatcher", "supervisor", "admin"):
        client = api_client(web, role)
        for sha in (case.annotated, case.crop):
            response = client.get(f"/evidence/{sha}")
            assert response.status_code == 200
            assert response.headers["content-type"] == "image/jpeg"
            assert response.headers["cache-control"].startswith("private, max-age=")
            assert hashlib.sha256(response.content).hexdigest() == sha


@pytest.mark.parametrize(
    ("role", "status"), [("operator", 403), ("dispatcher", 403), ("supervisor", 200), ("admin", 200)]
)
def test_restricted_originals_for_supervisors_and_above(web: WebApp, role: str, status: int) -> None:
    case = seed_case(web)
    response = api_client(web, role).get(f"/evidence/{case.clean}")
    assert response.status_code == status
    if status == 403:
        assert "supervisors" in response.json()["detail"]


def test_an_image_no_event_references_counts_as_restricted(web: WebApp) -> None:
    sha, data = jpeg_like(512, seed=time.time_ns())  # e.g. a re-check snapshot
    web.context.evidence.put(sha, data)
    assert api_client(web, "operator").get(f"/evidence/{sha}").status_code == 403
    assert api_client(web, "supervisor").get(f"/evidence/{sha}").content == data


def test_without_sign_in_the_browser_goes_to_the_login_page(web: WebApp) -> None:
    case = seed_case(web)
    response = web.client().get(f"/evidence/{case.annotated}")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=/evidence/")


def test_unknown_sha_is_404(web: WebApp) -> None:
    response = api_client(web, "admin").get(f"/evidence/{'ab' * 32}")
    assert response.status_code == 404


# Encoded: the HTTP client itself resolves a literal "/evidence/../.." before sending it.
@pytest.mark.parametrize(
    "path",
    [
        "/evidence/..%2F..%2Fetc%2Fpasswd",
        "/evidence/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/evidence/%2e%2e",
        "/evidence/%252e%252e%252fetc%252fpasswd",
        "/evidence/" + "A" * 64,
        "/evidence/" + "a" * 63,
        "/evidence/" + "a" * 64 + ".jpg",
        "/evidence/" + "a" * 62 + "%2F" + "a",
        "/evidence/" + "a" * 63 + "%00",
    ],
)
def test_path_traversal_attempts_never_reach_a_file(web: WebApp, path: str) -> None:
    response = api_client(web, "admin").get(path)
    assert response.status_code in (400, 404)
    assert b"root:" not in response.content


def test_bad_sha_is_400_with_a_clear_reason(web: WebApp) -> None:
    response = api_client(web, "admin").get("/evidence/%2e%2e")
    assert response.status_code == 400
    assert response.json()["detail"] == "not a lower-case hex sha256"


def test_a_link_inside_the_store_pointing_outside_is_refused(web: WebApp, outside: tuple[str, Path]) -> None:
    sha, target = outside
    store = web.context.evidence
    link = store.root / store.relative_path(sha)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    response = api_client(web, "admin").get(f"/evidence/{sha}")
    assert response.status_code == 404
    assert b"root:" not in response.content
    with pytest.raises(EvidenceOutsideStore):
        store.read(sha)


def test_a_linked_folder_pointing_outside_is_refused(tmp_path: Path, outside: tuple[str, Path]) -> None:
    sha, target = outside
    store = EvidenceStore(tmp_path / "store")
    relative = Path(store.relative_path(sha))
    fan_out = tmp_path / "elsewhere" / relative.parent.name
    fan_out.mkdir(parents=True)
    (fan_out / relative.name).symlink_to(target)
    (store.root / relative.parent.parent).mkdir(parents=True)
    (store.root / relative.parent).symlink_to(fan_out)
    with pytest.raises(EvidenceOutsideStore):
        store.path_of(sha)


def test_a_store_root_behind_a_link_still_serves(tmp_path: Path) -> None:
    real = EvidenceStore(tmp_path / "disk")
    sha, data = jpeg_like(256, seed=5)
    real.put(sha, data)
    (tmp_path / "evidence").symlink_to(tmp_path / "disk")
    assert EvidenceStore(tmp_path / "evidence").read(sha) == data


def test_path_of_names_its_errors(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path)
    with pytest.raises(EvidenceNotFound):
        store.path_of("cd" * 32)
    with pytest.raises(EvidenceStoreError, match="not a lower-case hex sha256"):
        store.path_of("../../etc/passwd")


def test_a_signed_link_admits_anyone_holding_it(web: WebApp) -> None:
    case = seed_case(web)
    url = evidence_link(web.context, case.clean, signed=True)
    public = web.context.settings.public_url.rstrip("/")
    assert url.startswith(f"{public}/evidence/{case.clean}?token=")
    response = web.client().get(url.removeprefix(public))
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == case.clean
    assert evidence_link(web.context, case.clean, signed=False) == f"/evidence/{case.clean}"


def _old_token(secret: str, sha: str, age_s: int) -> str:
    class PastSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - age_s

    return URLSafeTimedSerializer(secret, salt=LINK_SALT, signer=PastSigner).dumps(sha)


def test_an_expired_link_is_refused(web: WebApp) -> None:
    case = seed_case(web)
    max_age = web.context.settings.evidence_link_max_age_s
    client = web.client()
    fresh = _old_token(web.context.secret_key, case.annotated, max_age - 60)
    assert client.get(f"/evidence/{case.annotated}", params={"token": fresh}).status_code == 200
    stale = _old_token(web.context.secret_key, case.annotated, max_age + 60)
    response = client.get(f"/evidence/{case.annotated}", params={"token": stale})
    assert response.status_code == 403 and "expired" in response.json()["detail"]


def test_forged_and_misused_links_are_refused(web: WebApp) -> None:
    case = seed_case(web)
    token = evidence_link(web.context, case.annotated, signed=True).split("token=")[1]
    other_key = replace(web.context, secret_key="another-deployment-" + "y" * 40)
    cases = {
        "tampered": token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB"),
        "another key": evidence_link(other_key, case.annotated, signed=True).split("token=")[1],
        "another salt": URLSafeTimedSerializer(web.context.secret_key, salt="curbwatch.api-token").dumps(
            case.annotated
        ),
        "garbage": "x",
    }
    client = web.client()
    for name, forged in cases.items():
        response = client.get(f"/evidence/{case.annotated}", params={"token": forged})
        assert response.status_code == 403, name
    # A valid link opens its own image only.
    response = client.get(f"/evidence/{case.clean}", params={"token": token})
    assert response.status_code == 403 and "another image" in response.json()["detail"]


def record_arrival(web: WebApp, device_id: str, received_at: datetime, *shas: str) -> None:
    """Evidence rows as the ingest writes them when the images arrive."""
    with web.session_factory() as session, session.begin():
        for sha in shas:
            path = web.context.evidence.relative_path(sha)
            session.add(
                Evidence(sha256=sha, device_id=device_id, size_bytes=1024, path=path, received_at=received_at)
            )


@pytest.mark.parametrize("delay", [timedelta(seconds=5), timedelta(days=30)], ids=["on time", "a month late"])
def test_restriction_is_found_however_late_the_images_arrived(web: WebApp, delay: timedelta) -> None:
    case = seed_case(web)
    record_arrival(web, case.device_id, NOW + delay, case.clean, case.annotated, case.crop)
    operator = api_client(web, "operator")
    assert operator.get(f"/evidence/{case.annotated}").status_code == 200
    assert operator.get(f"/evidence/{case.crop}").status_code == 200
    assert operator.get(f"/evidence/{case.clean}").status_code == 403


def test_check_images_are_for_supervisors_and_above(web: WebApp) -> None:
    case = seed_case(web)
    sha, data = jpeg_like(512, seed=time.time_ns())
    web.context.evidence.put(sha, data)
    record_arrival(web, case.device_id, NOW, sha)
    with web.session_factory() as session, session.begin():
        session.add(
            CaseCheck(
                id=uuid.uuid4().hex,
                case_id=case.id,
                device_id=case.device_id,
                camera_id=case.camera_id,
                requested_at=NOW,
                requested_by="op",
                status="received",
                evidence_sha256=sha,
                answered_at=NOW,
            )
        )
    operator, supervisor = api_client(web, "operator"), api_client(web, "supervisor")
    assert operator.get(f"/evidence/{sha}").status_code == 403
    assert supervisor.get(f"/evidence/{sha}").content == data
    assert operator.get(f"/api/v1/cases/{case.id}").json()["checks"][0]["evidence_url"] is None
    assert (
        supervisor.get(f"/api/v1/cases/{case.id}").json()["checks"][0]["evidence_url"] == f"/evidence/{sha}"
    )
