"""The whole system on one machine: broker, ingest, web UI and an edge box, for ``curbwatch demo``.

Nothing here is demo-only logic: each part is the production component (the embedded amqtt broker
stands in for Mosquitto), wired together in one process so a newcomer sees events from a camera
turn into cases in the browser. Components start in dependency order (broker, database, ingest,
web) and stop in reverse.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from curbwatch.broker import EmbeddedBroker

if TYPE_CHECKING:
    import uvicorn
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from curbwatch.server.ingest import IngestWorker
    from curbwatch.server.settings import ServerSettings

logger = logging.getLogger(__name__)

WEB_START_TIMEOUT_S = 20.0


class StackError(RuntimeError):
    """A component of the local stack could not start."""


@dataclass(frozen=True)
class DemoLogin:
    """A sign-in the demo creates and prints (demo databases only)."""

    username: str
    password: str
    role: str


DEMO_LOGINS = (
    DemoLogin("operator", "operator-demo", "operator"),
    DemoLogin("dispatcher", "dispatcher-demo", "dispatcher"),
    DemoLogin("supervisor", "supervisor-demo", "supervisor"),
)


class LocalStack:
    """Broker, migrated SQLite database, one ingest worker and the web server, in this process.

    Args:
        workdir: Holds the database, the evidence store and the secret key.
        http_host: Address the web server binds.
        http_port: Web server port.
    """

    def __init__(self, workdir: Path, *, http_host: str = "127.0.0.1", http_port: int = 8000) -> None:
        self.workdir = workdir
        self.http_host = http_host
        self.http_port = http_port
        self.broker = EmbeddedBroker()
        self._engine: Engine | None = None
        self._session_factory: sessionmaker[Session] | None = None
        self._ingest: IngestWorker | None = None
        self._web: uvicorn.Server | None = None
        self._web_thread: threading.Thread | None = None
        self.settings: ServerSettings | None = None

    @property
    def url(self) -> str:
        """Where the operator UI is."""
        return f"http://{self.http_host}:{self.http_port}"

    def start(self) -> LocalStack:
        """Start every component; raises :class:`StackError` naming the one that failed.

        A failed start stops what had started, so nothing is left listening.
        """
        try:
            self._start_components()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_components(self) -> None:
        from curbwatch.server.db import make_engine, make_session_factory, migrate
        from curbwatch.server.settings import get_settings

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.broker.start()
        self.settings = get_settings(
            database_url=f"sqlite:///{self.workdir / 'curbwatch.db'}",
            evidence_dir=self.workdir / "server-evidence",
            secret_key_file=self.workdir / "secret.key",
            mqtt_host=self.broker.host,
            mqtt_port=self.broker.port,
            mqtt_protocol="3.1.1",
            share_group=None,
            worker_name="demo",
            http_host=self.http_host,
            http_port=self.http_port,
            public_url=self.url,
        )
        migrate(self.settings.database_url)
        self._engine = make_engine(self.settings.database_url)
        self._session_factory = make_session_factory(self._engine)
        self._ensure_logins()
        self._start_ingest()
        self._start_web()

    def device_key(self, device_id: str) -> str:
        """The device's HMAC key (hex), registering the device on first use."""
        from curbwatch.server.devices import add_device
        from curbwatch.server.devices import device_key as stored_key

        assert self._session_factory is not None, "start the stack first"
        with self._session_factory() as session, session.begin():
            key = stored_key(session, device_id)
            return key.hex() if key is not None else add_device(session, device_id)

    def _ensure_logins(self) -> None:
        from sqlalchemy import select

        from curbwatch.server.tables import User
        from curbwatch.server.users import add_user

        assert self._session_factory is not None
        with self._session_factory() as session, session.begin():
            existing = set(session.scalars(select(User.username)))
            for login in DEMO_LOGINS:
                if login.username not in existing:
                    add_user(session, login.username, login.password, login.role, at=datetime.now(UTC))

    def _start_ingest(self) -> None:
        from curbwatch.server.ingest import IngestWorker

        assert self.settings is not None and self._session_factory is not None
        self._ingest = IngestWorker(self.settings, self._session_factory)
        self._ingest.start()
        if not self._ingest.wait_subscribed(10):
            raise StackError("the ingest worker did not subscribe to the broker within 10 s")

    def _start_web(self) -> None:
        import uvicorn

        from curbwatch.server.web.app import create_app

        assert self.settings is not None and self._session_factory is not None
        app = create_app(self.settings, self._session_factory)
        config = uvicorn.Config(app, host=self.http_host, port=self.http_port, log_level="warning")
        self._web = uvicorn.Server(config)
        self._web_thread = threading.Thread(target=self._web.run, name="web", daemon=True)
        self._web_thread.start()
        deadline = time.monotonic() + WEB_START_TIMEOUT_S
        while not self._web.started:
            if not self._web_thread.is_alive() or time.monotonic() > deadline:
                raise StackError(f"the web server could not start on {self.url} (is the port taken?)")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop in reverse order; safe to call on a partly started stack."""
        if self._web is not None and self._web_thread is not None:
            self._web.should_exit = True
            self._web_thread.join(10)
        if self._ingest is not None:
            self._ingest.stop()
        if self._engine is not None:
            self._engine.dispose()
        self.broker.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
