"""Files: uploads streamed to disk under a size limit, listed, read and deleted, in OpenAI's shapes.

An upload is refused at once when its declared length is over the limit, and stops being read the moment its
bytes pass it (a chunked upload declares none), so a 2 GB file is never taken in whole. The bytes go to a
temporary file beside their place and are renamed into it once complete and synced: a file is either all there
or not there. Its name on disk is random, never the id or the client's filename.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tunelab.serve.errors import ApiError, bad_request, not_found
from tunelab.serve.store import Store, new_id, now, page

PURPOSES = ("fine-tune", "batch", "user_data", "assistants", "vision", "evals")
RESULTS = "fine-tune-results"
MULTIPART_SLACK = 64 * 1024  # the form's own bytes (boundaries, headers, other fields) around the file
EXPIRY_SECONDS = (3600, 2592000)  # OpenAI's bounds on expires_after.seconds: one hour to thirty days
SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,10}$")


class TooLarge(Exception):
    pass


class Files:
    def __init__(self, store: Store, root: Path, max_bytes: int):
        self.store, self.root, self.max_bytes = store, Path(root), max_bytes
        self.root.mkdir(parents=True, exist_ok=True)

    def too_large(self, size: int | None = None) -> ApiError:
        """413, and the connection closed after it: the client stops sending the rest of its body."""
        got = f" ({size} bytes)" if size else ""
        return ApiError(413, f"File is too large{got}: this server accepts files of up to {self.max_bytes} bytes "
                             "(tunelab serve --max-file-bytes)", param="file", code="file_too_large",
                        headers={"Connection": "close"})

    async def receive(self, request: Any) -> tuple[Any, dict[str, str]]:
        """The upload's file part (spooled to a temporary file) and its other fields, read within the limit."""
        from starlette.formparsers import MultiPartException, MultiPartParser

        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes + MULTIPART_SLACK:
            raise self.too_large(int(declared))
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise bad_request("Expected a multipart/form-data upload with a `file` and a `purpose`", "file")
        parser = MultiPartParser(request.headers, self._limited(request.stream()), max_files=1, max_fields=16)
        try:
            form = await parser.parse()
        except TooLarge:
            raise self.too_large() from None
        except MultiPartException as err:
            raise bad_request(f"Unreadable upload: {err.message}", "file") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise bad_request("Missing the `file` part of the upload", "file", "missing_required_parameter")
        return upload, {k: v for k, v in form.multi_items() if isinstance(v, str)}

    async def _limited(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in stream:
            seen += len(chunk)
            if seen > self.max_bytes + MULTIPART_SLACK:
                raise TooLarge()
            yield chunk

    def create(self, owner: str, upload: Any, fields: dict[str, str]) -> dict[str, Any]:
        purpose = fields.get("purpose")
        if purpose not in PURPOSES:
            raise bad_request(f"purpose: expected one of {', '.join(PURPOSES)}, got {purpose!r}", "purpose")
        filename = Path(upload.filename or "upload").name
        if purpose == "fine-tune" and not filename.endswith(".jsonl"):
            raise bad_request(f"Invalid file format for Fine-Tuning API. Must be .jsonl, got {filename!r}", "file",
                              "invalid_file_format")
        created = now()
        expires_at = _expiry(fields, created)
        blob, size = self._keep(upload.file, Path(filename).suffix)
        record = {"id": new_id("file"), "owner": owner, "filename": filename, "purpose": purpose, "bytes": size,
                  "created_at": created, "expires_at": expires_at, "status": "processed", "blob": blob}
        try:
            self.store.add_file(record)
        except BaseException:
            (self.root / blob).unlink(missing_ok=True)
            raise
        return render(record)

    def _keep(self, source: Any, suffix: str) -> tuple[str, int]:
        """Copy the spooled upload into the store atomically; its random name keeps the suffix (formats read it)."""
        blob = secrets.token_hex(16) + (suffix if SAFE_SUFFIX.match(suffix) else "")
        source.seek(0)
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
                size = out.tell()
            if size > self.max_bytes:
                raise self.too_large(size)
            os.replace(tmp, self.root / blob)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return blob, size

    def add_result(self, owner: str, filename: str, content: bytes) -> str:
        """A file the service writes (a job's results CSV), stored like an upload."""
        blob = secrets.token_hex(16) + Path(filename).suffix
        fd, tmp = tempfile.mkstemp(prefix=".result-", dir=self.root)
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.root / blob)
        file_id = new_id("file")
        self.store.add_file({"id": file_id, "owner": owner, "filename": filename, "purpose": RESULTS,
                             "bytes": len(content), "created_at": now(), "expires_at": None, "status": "processed",
                             "blob": blob})
        return file_id

    def get(self, owner: str, file_id: str) -> dict[str, Any]:
        record = self.store.file(owner, file_id)
        if record is None:
            raise not_found("file", file_id, "file_id", "file_not_found")
        return record

    def path(self, record: dict[str, Any]) -> Path:
        return self.root / record["blob"]

    def list(self, owner: str, after: str | None, limit: int, order: str, purpose: str | None) -> dict[str, Any]:
        if order not in ("asc", "desc"):
            raise bad_request(f"order: expected asc or desc, got {order!r}", "order")
        if not 1 <= limit <= 10000:
            raise bad_request(f"limit: expected 1 to 10000, got {limit}", "limit")
        sign, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        sql, args = "SELECT * FROM files WHERE owner = ?", [owner]
        if purpose:
            sql, args = sql + " AND purpose = ?", [*args, purpose]
        if after:
            anchor = self.store.one("SELECT rowid FROM files WHERE id = ? AND owner = ?", (after, owner))
            if anchor is None:
                raise not_found("file", after, "after", "file_not_found")
            sql, args = sql + f" AND rowid {sign} ?", [*args, anchor["rowid"]]
        rows, more = page(self.store.all(sql + f" ORDER BY rowid {direction} LIMIT ?", (*args, limit + 1)), limit)
        return cursor_page([render(r) for r in rows], more)

    def delete(self, owner: str, file_id: str) -> dict[str, Any]:
        record = self.get(owner, file_id)
        self.store.delete_file(owner, file_id)
        self.path(record).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}

    def expire(self) -> None:
        for record in self.store.expired_files(now()):
            self.store.delete_file(record["owner"], record["id"])
            self.path(record).unlink(missing_ok=True)


def _expiry(fields: dict[str, str], created: int) -> int | None:
    anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise bad_request(f'expires_after.anchor: expected "created_at", got {anchor!r}', "expires_after.anchor")
    low, high = EXPIRY_SECONDS
    if not (seconds or "").isdigit() or not low <= int(seconds) <= high:
        raise bad_request(f"expires_after.seconds: expected {low} to {high}, got {seconds!r}",
                          "expires_after.seconds")
    return created + int(seconds)


def render(record: dict[str, Any]) -> dict[str, Any]:
    return {"id": record["id"], "object": "file", "bytes": record["bytes"], "created_at": record["created_at"],
            "filename": record["filename"], "purpose": record["purpose"], "status": record["status"],
            "expires_at": record["expires_at"], "status_details": None}


def cursor_page(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": more,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}
