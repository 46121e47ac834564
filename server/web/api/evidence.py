"""Evidence images by sha256, for signed-in users and for holders of a signed, expiring link.

Two ways in:

* a signed-in user (session or bearer token): annotated frames and crops for every role, restricted
  originals (unblurred faces and plates) for supervisors and above only;
* ``?token=``: a link this server signed for one image (:func:`evidence_link` with ``signed=True``,
  e.g. an Open311 ``media_url``), valid for ``settings.evidence_link_max_age_s``. The server signs
  only what it chose to publish, so the token is the whole permission.

The sha256 is checked before it names a file, and the store refuses any path that resolves outside
its root, so no request can read anything but evidence.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import FileResponse
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from curbwatch.server.cases.queries import evidence_restricted, sees_restricted
from curbwatch.server.evidence import EvidenceNotFound, EvidenceOutsideStore, EvidenceStoreError
from curbwatch.server.web.context import AppContext
from curbwatch.server.web.deps import Context, Db, Principal, current_principal

logger = logging.getLogger(__name__)

router = APIRouter(tags=["evidence"])

EVIDENCE_PATH = "/evidence"
LINK_SALT = "curbwatch.evidence"
MEDIA_TYPE = "image/jpeg"
# Evidence never changes under its sha256; "private" keeps shared caches from storing it.
CACHE_MAX_AGE_S = 3600

LinkToken = Annotated[str | None, Query(max_length=512, description="Signed link token (Open311 media_url).")]


def _serializer(context: AppContext) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(context.secret_key, salt=LINK_SALT)


def evidence_link(context: AppContext, sha256: str, *, signed: bool) -> str:
    """Where an image is served.

    Args:
        context: The app context (secret key, public URL).
        sha256: The image.
        signed: False: a relative path for the UI (the viewer's sign-in decides). True: an absolute
            URL carrying a token that admits anyone holding it until it expires.
    """
    path = f"{EVIDENCE_PATH}/{sha256}"
    if not signed:
        return path
    token = _serializer(context).dumps(sha256)
    return f"{context.settings.public_url.rstrip('/')}{path}?token={token}"


def _check_token(context: AppContext, token: str, sha256: str) -> None:
    try:
        signed_sha = _serializer(context).loads(token, max_age=context.settings.evidence_link_max_age_s)
    except SignatureExpired:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "evidence link expired") from None
    except BadSignature:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "evidence link is not valid") from None
    if signed_sha != sha256:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "evidence link is for another image")


async def _signed_in_unless_token(
    request: Request, context: Context, session: Db, token: LinkToken = None
) -> Principal | None:
    """The signed-in caller; None when a link token is given (checked by the route)."""
    if token is not None:
        return None
    return await current_principal(request, context, session)


@router.get(
    f"{EVIDENCE_PATH}/{{sha256}}",
    response_class=FileResponse,
    responses={
        200: {"content": {MEDIA_TYPE: {}}, "description": "The image."},
        400: {"description": "Not a lower-case hex sha256."},
        401: {"description": "Not signed in and no link token."},
        403: {"description": "Restricted original for this role, or a bad or expired link."},
        404: {"description": "No image with this sha256."},
    },
)
def evidence(
    sha256: str,
    context: Context,
    session: Db,
    principal: Annotated[Principal | None, Depends(_signed_in_unless_token)],
    token: LinkToken = None,
) -> FileResponse:
    """One evidence image (JPEG) by the sha256 of its bytes."""
    if principal is None:
        _check_token(context, token or "", sha256)
    try:
        path = context.evidence.path_of(sha256)
    except EvidenceOutsideStore:
        logger.warning("evidence %s resolves outside the store; refused", sha256)
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no evidence {sha256}") from None
    except EvidenceNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no evidence {sha256}") from None
    except EvidenceStoreError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "not a lower-case hex sha256") from None
    if principal is not None and not sees_restricted(principal.role) and evidence_restricted(session, sha256):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "restricted original: supervisors and above only")
    return FileResponse(
        path, media_type=MEDIA_TYPE, headers={"Cache-Control": f"private, max-age={CACHE_MAX_AGE_S}"}
    )
