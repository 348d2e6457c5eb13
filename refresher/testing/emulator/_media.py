"""The media side of the emulator: X's chunked v2 media upload, ``POST /2/media/upload``.

A client uploads in three commands, as in X's own sample (xdevplatform/samples,
``Media Upload/media_upload_v2.py``), each with a bearer token holding ``media.write``:

- ``command=INIT`` with ``total_bytes`` and ``media_type`` (query string or form) answers
  ``{"data": {"id": "<media id>", "media_key": "3_<media id>", "expires_after_secs": 86400}}``
  (``7_`` for a video, ``16_`` for a GIF).
- ``command=APPEND`` with ``media_id`` and ``segment_index`` (0 to 999), the chunk as the
  ``multipart/form-data`` field ``media`` (at most 5 MB), answers
  ``{"data": {"expires_at": <epoch seconds>}}``.
- ``command=FINALIZE`` with ``media_id`` answers the media object:
  ``{"data": {"id", "media_key", "size", "expires_after_secs"}}``; ``size`` must be the
  ``total_bytes`` announced, the last chunk of each segment index counting once.

Parameters come from the query string, a form body or the text fields of a multipart body
(the body wins). Refusals are X's: 401 for a missing, unknown or expired token; a 403 problem
naming ``media.write`` when the token lacks it; a 400 ``invalid-request`` problem naming the
parameter for anything else (a missing or unknown ``command``, an unknown, expired, another
user's or finalized ``media_id``, a chunk missing or too big, sizes that do not add up).

Left out, to keep it small: ``STATUS`` and processing (a finalized media is ready at once,
with no ``processing_info``), base64 ``media_data``, ``media_category`` limits, and X's newer
``/2/media/upload/initialize``, ``/{id}/append`` and ``/{id}/finalize`` routes.

Every accepted APPEND is recorded with its bytes (:meth:`XEmulator.media_appends`), so that a
test can check that a replayed upload arrived whole, and once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from refresher.testing.emulator._api import scope_refusal, with_bearer
from refresher.testing.emulator._messages import (
    FORM,
    Request,
    Response,
    invalid_parameter,
    json_answer,
)
from refresher.testing.emulator._state import AccessRecord, EmulatorState, MediaRecord

logger = logging.getLogger("refresher.testing")

_MEDIA_SCOPES = frozenset({"media.write"})
_EXPIRES_AFTER = 86_400  # seconds an upload (and the media) lives, as X answers
_MAX_TOTAL_BYTES = 512 * 1024 * 1024  # X's largest media: a 512 MB video
_MAX_CHUNK = 5 * 1024 * 1024
_MAX_SEGMENT_INDEX = 999
# The media types X's v2 upload takes.
_MEDIA_TYPES = frozenset({
    "image/jpeg", "image/pjpeg", "image/png", "image/gif", "image/bmp", "image/webp",
    "image/tiff", "video/mp4", "video/webm", "video/mp2t", "video/quicktime", "text/srt",
    "text/vtt", "model/gltf-binary", "model/vnd.usdz+zip",
})


class MediaEndpoints(EmulatorState):
    """``POST /2/media/upload``: INIT, APPEND and FINALIZE."""

    @with_bearer
    def _media_upload(self, request: Request, access: AccessRecord) -> Response:
        refused = scope_refusal(access, _MEDIA_SCOPES)
        if refused is not None:
            return refused
        fields = request.multipart() or {}
        params = {**request.params(), **_text_fields(request, fields)}
        command = params.get("command", "")
        if command == "INIT":
            return self._media_init(params, access)
        if command == "APPEND":
            return self._media_append(params, fields.get("media"), access)
        if command == "FINALIZE":
            return self._media_finalize(params, access)
        return invalid_parameter("command", command,
                                 "The `command` parameter must be INIT, APPEND or FINALIZE.")

    def _media_init(self, params: Mapping[str, str], access: AccessRecord) -> Response:
        total = params.get("total_bytes", "")
        if not total.isdigit() or not 0 < int(total) <= _MAX_TOTAL_BYTES:
            return invalid_parameter("total_bytes", total, "The `total_bytes` parameter must "
                                     f"be a whole number from 1 to {_MAX_TOTAL_BYTES}.")
        media_type = params.get("media_type", "")
        if media_type not in _MEDIA_TYPES:
            return invalid_parameter("media_type", media_type,
                                     "The `media_type` parameter is missing or not supported.")
        with self._lock:
            self._next_media_id += 1
            media_id = str(self._next_media_id)
            self._media[media_id] = MediaRecord(access.user_id, media_type, int(total),
                                                self._clock.time() + _EXPIRES_AFTER)
        logger.debug("media upload %s started: %s bytes of %s", media_id, total, media_type)
        return json_answer(200, {"data": {
            "id": media_id,
            "media_key": _media_key(media_id, media_type),
            "expires_after_secs": _EXPIRES_AFTER,
        }})

    def _media_append(self, params: Mapping[str, str], chunk: bytes | None,
                      access: AccessRecord) -> Response:
        index = params.get("segment_index", "")
        if not index.isdigit() or int(index) > _MAX_SEGMENT_INDEX:
            return invalid_parameter("segment_index", index, "The `segment_index` parameter "
                                     f"must be a whole number from 0 to {_MAX_SEGMENT_INDEX}.")
        if chunk is None or len(chunk) > _MAX_CHUNK:
            return invalid_parameter("media", "", "The `media` multipart field is missing or "
                                     f"over {_MAX_CHUNK} bytes.")
        with self._lock:
            record = self._open_upload(params, access)
            if isinstance(record, Response):
                return record
            record.appends.append((int(index), chunk))
            expires_at = int(record.expires_at)
        logger.debug("media upload %s: segment %s, %d bytes", params["media_id"], index,
                     len(chunk))
        return json_answer(200, {"data": {"expires_at": expires_at}})

    def _media_finalize(self, params: Mapping[str, str], access: AccessRecord) -> Response:
        with self._lock:
            record = self._open_upload(params, access, finalized_too=True)
            if isinstance(record, Response):
                return record
            size = sum(len(chunk) for chunk in dict(record.appends).values())
            if size != record.total_bytes:
                return invalid_parameter(
                    "media_id", params["media_id"],
                    "Segments do not add up to provided total file size.")
            record.finalized = True
            left = max(0, int(record.expires_at - self._clock.time()))
        media_id = params["media_id"]
        logger.debug("media upload %s finalized: %d bytes", media_id, size)
        return json_answer(200, {"data": {
            "id": media_id,
            "media_key": _media_key(media_id, record.media_type),
            "size": size,
            "expires_after_secs": left,
        }})

    def _open_upload(self, params: Mapping[str, str], access: AccessRecord,
                     finalized_too: bool = False) -> MediaRecord | Response:
        """The user's live upload named by ``media_id``, or X's 400; the caller holds the lock."""
        media_id = params.get("media_id", "")
        record = self._media.get(media_id)
        if (
            record is None
            or record.user_id != access.user_id
            or self._clock.time() >= record.expires_at
            or (record.finalized and not finalized_too)
        ):
            return invalid_parameter("media_id", media_id,
                                     "The `media_id` parameter is missing or invalid.")
        return record

    # -- what a test reads -------------------------------------------------------------

    def media_appends(self, media_id: str) -> list[tuple[int, bytes]]:
        """Every APPEND the emulator accepted for ``media_id``, as ``(segment_index, bytes)``
        in arrival order (a chunk sent twice is there twice). KeyError for an unknown id."""
        with self._lock:
            return list(self._media[media_id].appends)


def _text_fields(request: Request, fields: Mapping[str, bytes]) -> dict[str, str]:
    """A form body's parameters, or a multipart body's fields but the media itself."""
    if request.content_type == FORM:
        return request.form()
    return {name: value.decode("utf-8", "replace") for name, value in fields.items()
            if name != "media"}


def _media_key(media_id: str, media_type: str) -> str:
    # X's media keys: 3_ images, 7_ videos, 16_ animated GIFs.
    prefix = "16" if media_type == "image/gif" else "7" if media_type.startswith("video/") else "3"
    return f"{prefix}_{media_id}"
