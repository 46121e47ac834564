"""Sign-in, sessions, CSRF, bearer tokens and the login throttle."""

from __future__ import annotations

import uuid

from tests.server.web.conftest import PASSWORD, WebApp


def test_login_page_then_session_reaches_api(web: WebApp) -> None:
    client = web.client()
    username = web.user("operator", display_name="Ada")
    assert client.get("/api/v1/auth/me").status_code == 401
    response = client.post("/login", data={"username": username, "password": PASSWORD, "next": "/queue"})
    assert response.status_code == 303 and response.headers["location"] == "/queue"
    me = client.get("/api/v1/auth/me").json()
    assert me == {"username": username, "display_name": "Ada", "role": "operator"}


def test_wrong_password_is_refused_without_saying_which_part(web: WebApp) -> None:
    client = web.client()
    username = web.user("operator")
    wrong = client.post("/login", data={"username": username, "password": "nope-nope-nope"})
    unknown = client.post("/login", data={"username": f"ghost-{uuid.uuid4().hex[:6]}", "password": PASSWORD})
    assert wrong.status_code == unknown.status_code == 401
    assert "wrong user name or password" in wrong.text and "wrong user name or password" in unknown.text
    assert client.get("/api/v1/auth/me").status_code == 401


def test_login_is_throttled_per_user_name(web: WebApp) -> None:
    client = web.client()
    username = web.user("operator")
    for _ in range(3):
        assert (
            client.post("/login", data={"username": username, "password": "bad-password"}).status_code == 401
        )
    throttled = client.post("/login", data={"username": username, "password": PASSWORD})
    assert throttled.status_code == 429
    assert int(throttled.headers["retry-after"]) > 0
    assert client.get("/api/v1/auth/me").status_code == 401


def test_open_redirect_after_login_goes_home(web: WebApp) -> None:
    client = web.client()
    username = web.user("operator")
    response = client.post(
        "/login", data={"username": username, "password": PASSWORD, "next": "//evil.example/x"}
    )
    assert response.headers["location"] == "/"


def test_logout_needs_the_csrf_token(web: WebApp) -> None:
    client = web.signed_in("operator")
    token = client.headers.pop("X-CSRF-Token")
    assert client.post("/logout").status_code == 403
    assert client.get("/api/v1/auth/me").status_code == 200
    assert client.post("/logout", data={"csrf_token": token}).status_code == 303
    assert client.get("/api/v1/auth/me").status_code == 401


def test_bearer_token_needs_no_cookie(web: WebApp) -> None:
    username = web.user("dispatcher")
    client = web.client()
    token = client.post("/api/v1/auth/token", data={"username": username, "password": PASSWORD}).json()
    fresh = web.client()
    me = fresh.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert me.json()["role"] == "dispatcher"
    forged = fresh.get(
        "/api/v1/auth/me", headers={"Authorization": "Bearer " + token["access_token"][:-2] + "xx"}
    )
    assert forged.status_code == 401


def test_login_is_throttled_per_client_address(web: WebApp) -> None:
    client = web.client()
    limit = web.context.settings.login_max_failures_per_client
    for attempt in range(limit):
        ghost = f"ghost-{attempt}-{uuid.uuid4().hex[:6]}"
        assert client.post("/login", data={"username": ghost, "password": "bad-password"}).status_code == 401
    username = web.user("operator")
    assert client.post("/login", data={"username": username, "password": PASSWORD}).status_code == 429
    assert web.client().post("/login", data={"username": username, "password": PASSWORD}).status_code == 303
