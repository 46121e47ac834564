"""The operator web app and REST API: :func:`create_app` builds it from settings and a config.

Routes stay thin: they parse the request, call the case services in ``server/cases`` (which own the
rules and the audit log) and shape the answer. Pages are server-rendered Jinja2 with a little
JavaScript of our own (no CDN: edge control rooms are often offline).
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session, sessionmaker
from starlette.middleware.sessions import SessionMiddleware

from curbwatch.server.config import CaseServerConfig, load_case_config
from curbwatch.server.device_link import DevicePublisher, MqttDevicePublisher
from curbwatch.server.evidence import EvidenceStore
from curbwatch.server.open311 import api as open311_api
from curbwatch.server.open311 import routes as open311_routes
from curbwatch.server.settings import ServerSettings
from curbwatch.server.web.api import auth as api_auth
from curbwatch.server.web.api import cameras as api_cameras
from curbwatch.server.web.api import cases as api_cases
from curbwatch.server.web.api import evidence as api_evidence
from curbwatch.server.web.api import kpis as api_kpis
from curbwatch.server.web.context import AppContext, load_secret_key
from curbwatch.server.web.deps import LoginRequired
from curbwatch.server.web.ui import auth as ui_auth
from curbwatch.server.web.ui import cameras_pages as ui_cameras
from curbwatch.server.web.ui import pages as ui_pages

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MACHINE_PREFIXES = ("/api/", "/open311/")
# Scripts and styles from our own origin only: an injected <script> cannot run even if escaping failed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


def _login_required(request: Request, _: Exception) -> Response:
    if request.url.path.startswith(MACHINE_PREFIXES):
        return JSONResponse(
            {"detail": "not signed in"},
            status.HTTP_401_UNAUTHORIZED,
            headers={"WWW-Authenticate": "Bearer"},
        )
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target)}", status.HTTP_303_SEE_OTHER)


def create_app(
    settings: ServerSettings,
    session_factory: sessionmaker[Session],
    *,
    config: CaseServerConfig | None = None,
    publisher: DevicePublisher | None = None,
    context: AppContext | None = None,
) -> FastAPI:
    """The app for one deployment.

    Args:
        settings: Server settings (database, secret key file, cookies, login throttle).
        session_factory: Sessions on the migrated database.
        config: City configuration; loaded from ``settings.case_config`` when None.
        publisher: Sends configs and commands to devices; an MQTT client from the settings when None.
        context: A complete context instead of the pieces above (tests fix the clock this way).
    """
    if context is None:
        context = AppContext(
            settings=settings,
            config=config if config is not None else load_case_config(settings.case_config),
            session_factory=session_factory,
            evidence=EvidenceStore(settings.evidence_dir),
            secret_key=load_secret_key(settings.secret_key_file),
            publisher=publisher if publisher is not None else MqttDevicePublisher(settings),
        )
    app = FastAPI(
        title="curbwatch case server",
        version="1",
        description="Violation cases from curbwatch edge cameras: review, workflow, Open311.",
    )
    app.state.context = context
    app.add_middleware(
        SessionMiddleware,
        secret_key=context.secret_key,
        session_cookie="curbwatch_session",
        max_age=settings.session_max_age_s,
        same_site="strict",
        https_only=settings.secure_cookies,
    )

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    app.add_exception_handler(LoginRequired, _login_required)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for router in (
        ui_auth.router,
        ui_pages.router,
        api_auth.router,
        api_cases.router,
        api_evidence.router,
        open311_routes.router,
        open311_api.router,
        api_cameras.router,
        api_kpis.router,
        ui_cameras.router,
    ):
        app.include_router(router)

    @app.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("/queue", status.HTTP_303_SEE_OTHER)

    return app
