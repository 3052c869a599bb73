"""Local endpoints that speak the clouds' auth protocols, for the Cloud Authenticator tests.

* AWS: moto's own server (a subprocess on 127.0.0.1) with IAM request signing enforced, so STS
  checks the key's signature like AWS does.
* GCP and Azure: :class:`FakeCloud`, one HTTPS server on 127.0.0.1 with a test CA, serving
  Google's OAuth token endpoint (it verifies the RS256 JWT the key signs) and Cloud Resource
  Manager's ``projects.get``, and Microsoft Entra ID's OpenID metadata and token endpoint plus
  Azure Resource Manager's ``subscriptions/get``. Answers, including errors, have the shapes the
  real services return.
* :class:`BlackHole`: a socket that accepts connections and never answers (timeouts).

:func:`isolated_env` points the libraries at these through their own settings and sends any
other HTTP(S) request to a dead proxy, so no test can reach a real cloud host.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

GCP_SCOPE = "https://www.googleapis.com/auth/cloud-platform.read-only"
# google-auth signs every service-account assertion for Google's token endpoint, whatever the
# key's token_uri says; Google checks that audience.
GOOGLE_AUDIENCE = "https://oauth2.googleapis.com/token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------
# TLS: a test CA and a server certificate for 127.0.0.1


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """Write ca.pem, server.pem and server.key (127.0.0.1 / localhost) into ``directory``."""
    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedcloud test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    import ipaddress

    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_pem, cert_pem, key_pem = directory / "ca.pem", directory / "server.pem", directory / "key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return ca_pem, cert_pem, key_pem


# --------------------------------------------------------------------------------------------
# GCP and Azure


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@dataclass
class FakeCloud:
    """State of the fake Google and Microsoft endpoints (tests edit it directly)."""

    base: str = ""
    gcp_keys: dict[str, tuple[str, Any]] = field(default_factory=dict)  # kid -> (email, pubkey)
    gcp_projects: dict[str, str] = field(default_factory=dict)  # project id -> display name
    gcp_grants: set[tuple[str, str]] = field(default_factory=set)  # (email, project)
    gcp_api_disabled: set[str] = field(default_factory=set)
    azure_tenants: set[str] = field(default_factory=set)
    azure_apps: dict[tuple[str, str], str] = field(default_factory=dict)  # (tenant, app)->secret
    azure_expired: set[tuple[str, str]] = field(default_factory=set)
    azure_subs: dict[str, str] = field(default_factory=dict)  # subscription -> display name
    azure_roles: set[tuple[str, str]] = field(default_factory=set)  # (app, subscription)
    tokens: dict[str, tuple[str, str]] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)

    # -- GCP ---------------------------------------------------------------------------------
    def new_gcp_key(self, directory: Path, project: str = "fl-project-1",
                    email: str | None = None, token_uri: str | None = None,
                    register: bool = True) -> Path:
        """Write a service-account key JSON; ``register`` makes Google know its public key."""
        email = email or f"fedcloud@{project}.iam.gserviceaccount.com"
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        kid = secrets.token_hex(20)
        if register:
            self.gcp_keys[kid] = (email, key.public_key())
        info = {
            "type": "service_account",
            "project_id": project,
            "private_key_id": kid,
            "private_key": key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()).decode(),
            "client_email": email,
            "client_id": str(10**20 + len(self.gcp_keys)),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri or f"{self.base}/token",
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/x",
            "universe_domain": "googleapis.com",
        }
        path = directory / f"{project}-{kid[:6]}.json"
        path.write_text(json.dumps(info, indent=2))
        return path

    def gcp_token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return 400, {"error": "unsupported_grant_type", "error_description": "Invalid grant"}
        try:
            head_b64, body_b64, sig_b64 = form["assertion"].split(".")
            header = json.loads(_b64url_decode(head_b64))
            claims = json.loads(_b64url_decode(body_b64))
            email, public_key = self.gcp_keys[header["kid"]]
            public_key.verify(_b64url_decode(sig_b64), f"{head_b64}.{body_b64}".encode(),
                              padding.PKCS1v15(), hashes.SHA256())
        except Exception:  # any defect of the assertion is Google's "invalid signature"
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        now = time.time()
        if (claims.get("iss") != email or claims.get("aud") != GOOGLE_AUDIENCE
                or not claims.get("iat", 0) - 300 <= now <= claims.get("exp", 0)
                or claims["exp"] - claims["iat"] > 3600):
            return 400, {"error": "invalid_grant", "error_description":
                         "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                         "reasonable timeframe. Check your iat and exp values in the JWT claim."}
        if GCP_SCOPE not in str(claims.get("scope", "")).split():
            return 400, {"error": "invalid_scope", "error_description": "Invalid OAuth scope."}
        token = "ya29." + secrets.token_urlsafe(24)
        self.tokens[token] = ("gcp", email)
        return 200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}

    def gcp_project(self, token: str, project: str) -> tuple[int, dict[str, Any]]:
        kind, who = self.tokens.get(token, ("", ""))
        if kind != "gcp":
            return 401, {"error": {"code": 401, "status": "UNAUTHENTICATED",
                                   "message": "Request had invalid authentication credentials."}}
        if project in self.gcp_api_disabled:
            return 403, {"error": {
                "code": 403, "status": "PERMISSION_DENIED",
                "message": f"Cloud Resource Manager API has not been used in project {project} "
                           "before or it is disabled.",
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                             "reason": "SERVICE_DISABLED"}]}}
        if project not in self.gcp_projects or (who, project) not in self.gcp_grants:
            return 403, {"error": {"code": 403, "status": "PERMISSION_DENIED",
                                   "message": "The caller does not have permission"}}
        return 200, {"name": "projects/123456789012", "projectId": project, "state": "ACTIVE",
                     "displayName": self.gcp_projects[project], "parent": "organizations/1"}

    # -- Azure -------------------------------------------------------------------------------
    def new_azure_sp(self, directory: Path, subscription: str | None = None, *,
                     role: bool = True, sdk_auth: bool = False) -> tuple[Path, str]:
        """Register a service principal and write its create-for-rbac JSON; return (path, sub)."""
        tenant, app, password = str(uuid.uuid4()), str(uuid.uuid4()), secrets.token_urlsafe(30)
        sub = subscription or str(uuid.uuid4())
        self.azure_tenants.add(tenant)
        self.azure_apps[(tenant, app)] = password
        self.azure_subs.setdefault(sub, "FL subscription")
        if role:
            self.azure_roles.add((app, sub))
        if sdk_auth:
            doc = {"clientId": app, "clientSecret": password, "subscriptionId": sub,
                   "tenantId": tenant, "activeDirectoryEndpointUrl": self.base,
                   "resourceManagerEndpointUrl": self.base + "/",
                   "activeDirectoryGraphResourceId": "https://graph.windows.net/",
                   "sqlManagementEndpointUrl": "https://management.core.windows.net:8443/",
                   "galleryEndpointUrl": "https://gallery.azure.com/",
                   "managementEndpointUrl": "https://management.core.windows.net/"}
        else:
            doc = {"appId": app, "displayName": "fedcloud", "password": password,
                   "tenant": tenant}
        path = directory / f"sp-{app[:8]}.json"
        path.write_text(json.dumps(doc, indent=2))
        return path, sub

    def azure_openid(self, tenant: str) -> tuple[int, dict[str, Any]]:
        if tenant not in self.azure_tenants:
            return 400, {"error": "invalid_tenant", "error_codes": [90002],
                         "error_description": f"AADSTS90002: Tenant '{tenant}' not found. "
                         "Check to make sure you have the correct tenant ID."}
        root = f"{self.base}/{tenant}"
        return 200, {"token_endpoint": f"{root}/oauth2/v2.0/token",
                     "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
                     "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
                     "issuer": f"{root}/v2.0", "jwks_uri": f"{root}/discovery/v2.0/keys",
                     "token_endpoint_auth_methods_supported": ["client_secret_post"]}

    def azure_token(self, tenant: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        app = form.get("client_id", "")
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type", "error_codes": [70003],
                         "error_description": "AADSTS70003: unsupported grant type."}
        if (tenant, app) not in self.azure_apps:
            return 400, {"error": "unauthorized_client", "error_codes": [700016],
                         "error_description": f"AADSTS700016: Application with identifier "
                         f"'{app}' was not found in the directory '{tenant}'."}
        if (tenant, app) in self.azure_expired:
            return 401, {"error": "invalid_client", "error_codes": [7000222],
                         "error_description": "AADSTS7000222: The provided client secret keys "
                         f"for app '{app}' are expired."}
        if form.get("client_secret") != self.azure_apps[(tenant, app)]:
            return 401, {"error": "invalid_client", "error_codes": [7000215],
                         "error_description": "AADSTS7000215: Invalid client secret provided."}
        if form.get("scope") != f"{self.base}/.default":
            return 400, {"error": "invalid_scope", "error_codes": [1002012],
                         "error_description": "AADSTS1002012: The provided value for scope "
                         f"{form.get('scope')} is not valid."}
        token = "eyJ0eXAi." + secrets.token_urlsafe(24)
        self.tokens[token] = ("azure", app)
        return 200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                     "access_token": token}

    def azure_subscription(self, token: str, sub: str) -> tuple[int, dict[str, Any]]:
        kind, app = self.tokens.get(token, ("", ""))
        if kind != "azure":
            return 401, {"error": {"code": "InvalidAuthenticationToken",
                                   "message": "The access token is invalid."}}
        if (app, sub) not in self.azure_roles:
            return 403, {"error": {"code": "AuthorizationFailed", "message":
                                   f"The client '{app}' with object id '{app}' does not have "
                                   "authorization to perform action 'Microsoft.Resources/"
                                   f"subscriptions/read' over scope '/subscriptions/{sub}'."}}
        if sub not in self.azure_subs:
            return 404, {"error": {"code": "SubscriptionNotFound",
                                   "message": f"The subscription '{sub}' could not be found."}}
        return 200, {"id": f"/subscriptions/{sub}", "subscriptionId": sub,
                     "displayName": self.azure_subs[sub], "state": "Enabled",
                     "tenantId": "t", "authorizationSource": "RoleBased"}


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length).decode()
        return {k: v[0] for k, v in parse_qs(raw).items()}

    def _bearer(self) -> str:
        auth = self.headers.get("Authorization", "")
        return auth[len("Bearer "):] if auth.startswith("Bearer ") else ""

    def do_POST(self) -> None:
        cloud: FakeCloud = self.server.cloud
        path = urlparse(self.path).path
        cloud.log.append(("POST", path))
        parts = path.strip("/").split("/")
        if path == "/token":
            self._reply(*cloud.gcp_token(self._form()))
        elif len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
            self._reply(*cloud.azure_token(parts[0], self._form()))
        else:
            self._reply(404, {"error": "not found"})

    def do_GET(self) -> None:
        cloud: FakeCloud = self.server.cloud
        url = urlparse(self.path)
        cloud.log.append(("GET", url.path))
        parts = url.path.strip("/").split("/")
        if len(parts) == 3 and parts[:2] == ["v3", "projects"]:
            self._reply(*cloud.gcp_project(self._bearer(), parts[2]))
        elif len(parts) == 4 and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            self._reply(*cloud.azure_openid(parts[0]))
        elif len(parts) == 2 and parts[0] == "subscriptions":
            if parse_qs(url.query).get("api-version") is None:
                self._reply(400, {"error": {"code": "MissingApiVersionParameter",
                                            "message": "The api-version is required."}})
            else:
                self._reply(*cloud.azure_subscription(self._bearer(), parts[1]))
        else:
            self._reply(404, {"error": "not found"})


class FakeCloudServer:
    """Run a :class:`FakeCloud` over HTTPS on 127.0.0.1 (a free port)."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.cloud = FakeCloud(base=f"https://127.0.0.1:{self.httpd.server_address[1]}")
        self.httpd.cloud = self.cloud  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeCloud:
        self.thread.start()
        return self.cloud

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class BlackHole:
    """A listening socket on 127.0.0.1 that never accepts: connections hang until timeout."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------------------------------------
# AWS: moto's server


class MotoServer:
    """moto_server on 127.0.0.1 with request signing enforced after ``unauthenticated`` calls."""

    def __init__(self, unauthenticated: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(unauthenticated))
        exe = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
                                     env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto_server did not start within 30 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------------------------
# Environment isolation


def isolated_env(monkeypatch: pytest.MonkeyPatch, ca_pem: Path | None, home: Path) -> None:
    """Point the SDKs at nothing but loopback, through their own environment settings.

    Any request not to 127.0.0.1/localhost goes to a dead proxy (port 9 on loopback), so a
    default endpoint left in a code path fails loudly instead of reaching a real cloud.
    """
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_STS", "AZURE_AUTHORITY_HOST", "AZURE_CLIENT_ID",
                "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "GOOGLE_APPLICATION_CREDENTIALS",
                "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(var, raising=False)
    dead = "http://127.0.0.1:9"
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, dead)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    if ca_pem is not None:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_pem))
