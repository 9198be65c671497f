"""Credentials for auth tests, made on the spot: TLS certificates, NKeys, and operator/account/user JWTs.

Certificates come from the ``cryptography`` package, NKeys from ``nkeys``.
The JWTs are NATS's decentralized-auth tokens (what ``nsc`` makes): a JSON
header and claims, base64url-encoded and signed with the issuer's Ed25519
NKey, in a chain operator -> account -> user. A creds file is the user JWT
and the user's seed, in the layout nats-py and ``nsc`` read.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import attrs
import nkeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# -- TLS -------------------------------------------------------------------------


@attrs.frozen
class Pki:
    """PEM files: a CA, a server certificate for 127.0.0.1/localhost, and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed none of these


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(name: str) -> Tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    name: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, *, server: bool
) -> Tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(directory: Path) -> Pki:
    """A fresh CA, server and client certificates, written as PEM files in ``directory``."""
    ca, ca_key = _ca("natsbus test CA")
    server, server_key = _leaf("natsbus test server", ca, ca_key, server=True)
    client, client_key = _leaf("natsbus test client", ca, ca_key, server=False)
    other, _ = _ca("natsbus unrelated CA")
    return Pki(
        ca=_write_cert(ca, directory / "ca.pem"),
        server_cert=_write_cert(server, directory / "server-cert.pem"),
        server_key=_write_key(server_key, directory / "server-key.pem"),
        client_cert=_write_cert(client, directory / "client-cert.pem"),
        client_key=_write_key(client_key, directory / "client-key.pem"),
        other_ca=_write_cert(other, directory / "other-ca.pem"),
    )


# -- NKeys and JWTs ----------------------------------------------------------------


def new_keypair(prefix: int) -> Any:
    """A fresh NKey pair; ``prefix`` is e.g. ``nkeys.PREFIX_BYTE_USER``."""
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def public(keypair: Any) -> str:
    return str(keypair.public_key.decode())


def seed(keypair: Any) -> str:
    return str(keypair.seed.decode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def encode_jwt(issuer: Any, subject: str, name: str, nats: Dict[str, Any]) -> str:
    """A NATS v2 JWT for ``subject``, signed by the ``issuer`` key pair."""
    header = {"typ": "JWT", "alg": "ed25519-nkey"}
    claims: Dict[str, Any] = {"jti": "", "iat": int(time.time()), "iss": public(issuer), "name": name, "sub": subject}
    claims["nats"] = nats
    digest = hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = issuer.sign(signing_input.encode())
    return f"{signing_input}.{_b64(signature)}"


@attrs.frozen
class Operator:
    """A decentralized-auth setup: server config text and a user's creds file."""

    config: str
    creds: Path
    user_seed: str


CREDS_TEMPLATE = """-----BEGIN NATS USER JWT-----
{jwt}
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
{seed}
------END USER NKEY SEED------

*************************************************************
"""


def make_operator(directory: Path, *, deny_publish: Optional[str] = None) -> Operator:
    """An operator, an account and a user, with the server config that trusts them."""
    operator = new_keypair(nkeys.PREFIX_BYTE_OPERATOR)
    account = new_keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    system = new_keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user = new_keypair(nkeys.PREFIX_BYTE_USER)
    limits = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True, "conn": -1}
    account_claims = {"limits": {**limits, "leaf": -1}, "type": "account", "version": 2}
    operator_jwt = encode_jwt(operator, public(operator), "natsbus-op", {"type": "operator", "version": 2})
    account_jwt = encode_jwt(operator, public(account), "natsbus-account", account_claims)
    system_jwt = encode_jwt(operator, public(system), "SYS", account_claims)
    publish: Dict[str, Any] = {"deny": [deny_publish]} if deny_publish else {}
    user_claims = {"pub": publish, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}
    user_jwt = encode_jwt(account, public(user), "natsbus-user", user_claims)
    creds = directory / "user.creds"
    creds.write_text(CREDS_TEMPLATE.format(jwt=user_jwt, seed=seed(user)))
    config = (
        f"operator: {operator_jwt}\n"
        f"system_account: {public(system)}\n"
        "resolver: MEMORY\n"
        "resolver_preload: {\n"
        f"  {public(account)}: {account_jwt}\n"
        f"  {public(system)}: {system_jwt}\n"
        "}\n"
    )
    return Operator(config, creds, seed(user))
