"""A small but real OpenID Provider on 127.0.0.1 for the SSO tests (not a mock).

It serves discovery, JWKS, an authorization endpoint (the user "consents" at once, as
the test decides who is signed in) and a token endpoint that checks the client secret,
the single-use code, the redirect URI and the PKCE verifier, then signs an RS256 ID
token. Knobs let a test make the provider misbehave (wrong key, audience, nonce).
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from authlib.oauth2.rfc7636.challenge import compare_s256_code_challenge
from flask import Flask, Response, jsonify, redirect, request
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from werkzeug.serving import make_server


@dataclass
class OidcProvider:
    client_id: str = "vitalcast-test"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    user: dict[str, Any] = field(default_factory=dict)  # claims of who signs in next
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, {"kid": "k1"}))
    signing_key: RSAKey | None = None  # set to sign with a key not in the JWKS
    audience: str | None = None  # set to issue tokens for another client
    nonce: str | None = None  # set to replay a stale nonce
    issuer: str = ""
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    token_requests: int = 0

    def app(self) -> Flask:
        app = Flask("oidc-provider")

        @app.get("/.well-known/openid-configuration")
        def discovery() -> Response:
            return jsonify(
                {
                    "issuer": self.issuer,
                    "authorization_endpoint": self.issuer + "/authorize",
                    "token_endpoint": self.issuer + "/token",
                    "jwks_uri": self.issuer + "/jwks",
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "code_challenge_methods_supported": ["S256"],
                }
            )

        @app.get("/jwks")
        def jwks() -> Response:
            return jsonify(KeySet([self.key]).as_dict(private=False))

        @app.get("/authorize")
        def authorize() -> Response:
            args = request.args
            if args.get("client_id") != self.client_id or args.get("response_type") != "code":
                return Response("bad client or response type", status=400)
            if args.get("code_challenge_method") != "S256" or "openid" not in args["scope"]:
                return Response("PKCE S256 and the openid scope are required", status=400)
            code = secrets.token_urlsafe(16)
            self.codes[code] = dict(args)
            target = args["redirect_uri"] + "?" + urlencode({"code": code, "state": args["state"]})
            return redirect(target)  # type: ignore[return-value]

        @app.post("/token")
        def token() -> tuple[Response, int] | Response:
            self.token_requests += 1
            auth = request.headers.get("Authorization", "")
            expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
            if auth != f"Basic {expected}":
                return jsonify({"error": "invalid_client"}), 401
            grant = self.codes.pop(request.form.get("code", ""), None)  # single use
            if grant is None or request.form.get("redirect_uri") != grant["redirect_uri"]:
                return jsonify({"error": "invalid_grant"}), 400
            verifier = request.form.get("code_verifier", "")
            if not compare_s256_code_challenge(verifier, grant["code_challenge"]):
                return jsonify({"error": "invalid_grant", "error_description": "PKCE"}), 400
            now = int(time.time())
            claims = {
                "iss": self.issuer,
                "aud": self.audience or self.client_id,
                "iat": now,
                "exp": now + 300,
                "nonce": self.nonce or grant["nonce"],
                **self.user,
            }
            signer = self.signing_key or self.key
            id_token = jwt.encode({"alg": "RS256", "kid": signer.kid}, claims, signer)
            return jsonify(
                {
                    "access_token": secrets.token_urlsafe(16),
                    "token_type": "Bearer",
                    "id_token": id_token,
                }
            )

        return app


@contextmanager
def running_provider() -> Iterator[OidcProvider]:
    provider = OidcProvider()
    server = make_server("127.0.0.1", 0, provider.app(), threaded=True)
    provider.issuer = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
