"""The HTTP client the CLI uses. Where the service is: --url, FLOPWISE_CLUSTER_URL, or the endpoint.json the
service wrote in its home; the token: --token, FLOPWISE_CLUSTER_TOKEN, or (same machine) the first team's
token in the home's tokens.toml."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import requests

from flopwise.errors import FlopwiseError


class ClusterClientError(FlopwiseError):
    """The service refused a request or cannot be reached."""


class Client:
    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    @classmethod
    def find(cls, url: str | None, token: str | None, home: Path) -> Client:
        url = url or os.environ.get("FLOPWISE_CLUSTER_URL")
        if not url:
            endpoint = home / "endpoint.json"
            if not endpoint.is_file():
                raise ClusterClientError(f"no service found: start one with `flopwise cluster up` or give --url "
                                         f"(looked for {endpoint})")
            url = json.loads(endpoint.read_text())["url"]
        token = token or os.environ.get("FLOPWISE_CLUSTER_TOKEN")
        if not token:
            path = home / "tokens.toml"
            try:
                teams = tomllib.loads(path.read_text()).get("teams", {})
            except (OSError, tomllib.TOMLDecodeError):
                teams = {}
            if not teams:
                raise ClusterClientError(f"no token: give --token or FLOPWISE_CLUSTER_TOKEN (none in {path})")
            token = next(iter(teams.values()))
        return cls(url, token)

    def _call(self, method: str, path: str, **kw):
        try:
            resp = self.session.request(method, self.url + path, timeout=self.timeout, **kw)
        except requests.RequestException as exc:
            raise ClusterClientError(f"cannot reach the service at {self.url}: {exc.__class__.__name__}") from None
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            raise ClusterClientError(f"{resp.status_code}: {detail}")
        return resp.json()

    def submit(self, toml_text: str) -> dict:
        return self._call("POST", "/api/jobs", json={"toml": toml_text})

    def submit_table(self, job: dict) -> dict:
        return self._call("POST", "/api/jobs", json={"job": job})

    def jobs(self, state: str | None = None) -> list[dict]:
        return self._call("GET", "/api/jobs", params={"state": state} if state else None)

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/api/jobs/{job_id}")

    def logs(self, job_id: str, offset: int = 0) -> dict:
        return self._call("GET", f"/api/jobs/{job_id}/logs", params={"offset": offset})

    def cancel(self, job_id: str) -> dict:
        return self._call("POST", f"/api/jobs/{job_id}/cancel")

    def queue(self) -> list[dict]:
        return self._call("GET", "/api/queue")

    def nodes(self) -> list[dict]:
        return self._call("GET", "/api/nodes")

    def usage(self) -> list[dict]:
        return self._call("GET", "/api/usage")
