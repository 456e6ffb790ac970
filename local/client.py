"""A client for Kiosk's HTTP API (/api/v1), so scripts and the CLI work the same against the
local stack and a remote cluster."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from email.message import Message
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx

from kiosk.keys import FINAL_STATUSES

DEFAULT_URL = "http://127.0.0.1:8080"
CHUNK = 1024 * 1024

Progress = Callable[[int], None]


class KioskError(Exception):
    """A refusal or failure, with the server's own explanation when it gave one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _CountingFile:
    """A file whose reads are reported, for upload progress bars."""

    def __init__(self, file: BinaryIO, on_progress: Progress) -> None:
        self._file = file
        self._on_progress = on_progress

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._on_progress(len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


class KioskClient:
    def __init__(
        self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 60.0
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KioskClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unreachable(self, exc: httpx.TransportError) -> KioskError:
        return KioskError(
            f"cannot reach Kiosk at {self.url} ({exc.__class__.__name__}): is it running? "
            "Start one with `kiosk up`, or pass --url"
        )

    @staticmethod
    def _refusal(response: httpx.Response) -> KioskError:
        try:
            message = response.json().get("message") or response.text
        except ValueError:
            message = response.text or response.reason_phrase
        return KioskError(f"{message} (HTTP {response.status_code})", response.status_code)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.is_error:
            raise self._refusal(response)
        return response

    @staticmethod
    def _job_path(job_id: str) -> str:
        return f"/api/v1/jobs/{quote(job_id, safe=':')}"

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/api/v1/health").json()

    def job_types(self) -> list[str]:
        return self._request("GET", "/api/v1/job-types").json()["job_types"]

    def job_type_aliases(self) -> dict[str, str]:
        """Other names the Kiosk accepts for its job types (``caliban`` for ``tracking``)."""
        return self._request("GET", "/api/v1/job-types").json().get("aliases", {})

    def submit(
        self,
        path: Path,
        job_type: str,
        options: dict[str, str] | None = None,
        on_progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Upload a file and create its job; returns the job."""
        fields = {"job_type": job_type, **{k: v for k, v in (options or {}).items() if v}}
        with open(path, "rb") as file:
            body = _CountingFile(file, on_progress) if on_progress else file
            response = self._request(
                "POST", "/api/v1/jobs", data=fields, files={"file": (path.name, body)}
            )
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", self._job_path(job_id)).json()

    def jobs(
        self, limit: int = 50, status: str | None = None, job_type: str | None = None
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` jobs, newest first. A page may hold fewer than asked while older
        ones remain (the server scans a bounded stretch of all jobs for the caller's): the
        pages are followed until there are ``limit`` or no more."""
        params: dict[str, Any] = {"limit": limit, "status": status, "job_type": job_type}
        found: list[dict[str, Any]] = []
        while len(found) < limit:
            params["limit"] = limit - len(found)
            response = self._request(
                "GET", "/api/v1/jobs", params={k: v for k, v in params.items() if v is not None}
            )
            page = response.json()
            found += page["jobs"]
            if not page.get("next_cursor"):
                break
            params["cursor"] = page["next_cursor"]
        return found

    def delete(self, job_id: str) -> None:
        self._request("DELETE", self._job_path(job_id))

    def usage(self, user: str | None = None, since: str | None = None) -> dict[str, Any]:
        """GPU seconds, CPU seconds and cost per user and group, of the jobs this client sees."""
        params = {k: v for k, v in {"user": user, "since": since}.items() if v}
        return self._request("GET", "/api/v1/usage", params=params).json()

    def me(self) -> dict[str, Any]:
        """Who this client's token makes it: name, group, admin."""
        return self._request("GET", "/api/v1/me").json()

    def add_user(self, name: str, group: str = "", weight: float = 1.0) -> dict[str, Any]:
        """Create a user (the administrator's token); the answer holds their token, once."""
        body = {"name": name, "group": group, "weight": weight}
        return self._request("POST", "/api/v1/users", json=body).json()

    def set_weight(self, name: str, weight: float) -> dict[str, Any]:
        """Change a user's fair-share weight (the administrator's token)."""
        path = f"/api/v1/users/{quote(name, safe='')}"
        return self._request("PATCH", path, json={"weight": weight}).json()

    def users(self) -> list[dict[str, Any]]:
        return self._request("GET", "/api/v1/users").json()

    def revoke_user(self, name: str) -> dict[str, Any]:
        return self._request("DELETE", f"/api/v1/users/{quote(name, safe='')}").json()

    def wait(
        self,
        job_ids: Iterable[str],
        on_update: Callable[[dict[str, Any]], None] | None = None,
        interval: float = 1.0,
        timeout: float | None = None,
    ) -> dict[str, dict]:
        """Poll until every job is done or failed; returns the final jobs by id."""
        pending = list(job_ids)
        final: dict[str, dict] = {}
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            for job_id in list(pending):
                job = self.job(job_id)
                if on_update:
                    on_update(job)
                if job["status"] in FINAL_STATUSES:
                    final[job_id] = job
                    pending.remove(job_id)
            if pending:
                if deadline is not None and time.monotonic() > deadline:
                    raise KioskError(f"{len(pending)} jobs still running after {timeout}s")
                time.sleep(interval)
        return final

    def download(
        self,
        job_id: str,
        directory: Path,
        name: str | None = None,
        on_progress: Progress | None = None,
    ) -> Path:
        """Save a done job's result into ``directory``; returns the file's path."""
        directory.mkdir(parents=True, exist_ok=True)
        partial: Path | None = None
        try:
            with self._http.stream("GET", self._job_path(job_id) + "/result") as response:
                if response.is_error:
                    response.read()
                    raise self._refusal(response)
                filename = name or _attachment_name(response) or "result"
                target = directory / Path(filename).name
                partial = target.with_name(target.name + ".partial")
                with open(partial, "wb") as out:
                    for chunk in response.iter_bytes(CHUNK):
                        out.write(chunk)
                        if on_progress:
                            on_progress(len(chunk))
                partial.replace(target)
                return target
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        finally:
            if partial is not None:
                partial.unlink(missing_ok=True)


def _attachment_name(response: httpx.Response) -> str | None:
    """The file name in Content-Disposition, RFC 2231 ``filename*`` included."""
    header = response.headers.get("content-disposition")
    if not header:
        return None
    message = Message()
    message["content-disposition"] = header
    return message.get_filename()
