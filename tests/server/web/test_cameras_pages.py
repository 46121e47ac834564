"""Cameras, camera and dashboard pages: who sees them, what they load, nothing inline."""

from __future__ import annotations

import re

import pytest

from tests.server.web.conftest import WebApp
from tests.server.web.test_cameras_api import camera_with_history

INLINE = re.compile(r"<script(?![^>]*\ssrc=)|\son[a-z]+=|\sstyle=", re.IGNORECASE)


@pytest.mark.parametrize(("path", "script"), [("/cameras", "cameras.js"), ("/dashboard", "dashboard.js")])
def test_pages_load_their_script_and_nothing_inline(web: WebApp, path: str, script: str) -> None:
    response = web.signed_in("operator").get(path)
    assert response.status_code == 200
    assert f'<script src="/static/{script}" defer></script>' in response.text
    assert not INLINE.search(response.text)
    assert web.client().get(f"/static/{script}").status_code == 200


def test_pages_need_a_sign_in(web: WebApp) -> None:
    for path in ("/cameras", "/cameras/cam-1", "/dashboard"):
        response = web.client().get(path)
        assert response.status_code == 303 and response.headers["location"].startswith("/login?next=")


def test_camera_page_offers_the_zone_editor_to_supervisors_only(web: WebApp) -> None:
    _, _, camera, _ = camera_with_history(web)
    supervisor = web.signed_in("supervisor").get(f"/cameras/{camera}")
    assert supervisor.status_code == 200 and not INLINE.search(supervisor.text)
    assert f'data-camera-id="{camera}"' in supervisor.text and 'data-can-edit="true"' in supervisor.text
    assert 'id="zone-publish"' in supervisor.text and "/static/zone_editor.js" in supervisor.text
    assert 'data-timezone="Asia/Shanghai"' in supervisor.text
    operator = web.signed_in("operator").get(f"/cameras/{camera}")
    assert operator.status_code == 200 and 'data-can-edit="false"' in operator.text
    assert 'id="zone-publish"' not in operator.text and 'id="zone-svg"' in operator.text


def test_unknown_camera_page_is_404(web: WebApp) -> None:
    response = web.signed_in("operator").get("/cameras/cam-nowhere")
    assert response.status_code == 404 and "No device reports camera cam-nowhere" in response.text
    assert "zone_editor.js" not in response.text
