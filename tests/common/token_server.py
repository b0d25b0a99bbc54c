"""A distribution token server for tests (the bearer flow Harbor and Docker Hub use).

    python3 token_server.py PORT KEY.pem CERT.pem SERVICE USER PASS LOG [EXPIRES_IN]

GET /token?service=..&scope=repository:NAME:ACTIONS with HTTP basic USER:PASS (or none, for
anonymous) answers {"token": JWT, "expires_in": EXPIRES_IN (default 300)}: an RS256 JWT signed with KEY (by the
openssl CLI) carrying CERT in x5c, which the registry trusts as its rootcertbundle. Anonymous
requests get a token with no access. Every request is appended to LOG (one line each).
"""

import base64
import http.server
import json
import subprocess
import sys
import time
import urllib.parse
import uuid

PORT, KEY, CERT, SERVICE, USER, PASS, LOG = sys.argv[1:8]
EXPIRES_IN = int(sys.argv[8]) if len(sys.argv) > 8 else 300


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def cert_der() -> str:
    der = subprocess.run(
        ["openssl", "x509", "-in", CERT, "-outform", "DER"], capture_output=True, check=True
    ).stdout
    return base64.b64encode(der).decode()


X5C = cert_der()


def sign(claims: dict) -> str:
    header = {"alg": "RS256", "typ": "JWT", "x5c": [X5C]}
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    signature = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", KEY],
        input=signing_input.encode(),
        capture_output=True,
        check=True,
    ).stdout
    return signing_input + "." + b64(signature)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(url.query)
        with open(LOG, "a") as log:
            log.write(self.path + "\n")
        authorized = False
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if (user, password) != (USER, PASS):
                self.send_response(401)
                self.end_headers()
                return
            authorized = True
        access = []
        for scope in query.get("scope", []):
            kind, name, actions = scope.split(":", 2)
            if authorized:
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": "tugboat-test-issuer",
            "sub": USER if authorized else "",
            "aud": SERVICE,
            "exp": now + max(EXPIRES_IN, 60),
            "nbf": now - 10,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "access": access,
        }
        body = json.dumps({"token": sign(claims), "expires_in": EXPIRES_IN}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(PORT)), Handler).serve_forever()
