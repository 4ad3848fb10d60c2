"""A real Apache Kafka broker (KRaft mode, one node as broker and controller) for the tests and the bench.

Kafka's own jars come from Maven Central (``org.apache.kafka:kafka_2.13`` and its dependencies,
resolved by ``mvn dependency:copy-dependencies``) into ``~/.cache/continuum/kafka/`` (never the repo),
once per machine; the broker runs on the machine's Java (17 or newer) with the ``kafka.Kafka`` main
class after ``kafka.tools.StorageTool format``. :func:`unavailable` says why it cannot run here, or
returns None.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.ingest.conftest import broker_url, free_port, terminate, wait_port

KAFKA_VERSION = "4.1.1"
CACHE = Path(os.environ.get("CONTINUUM_KAFKA_CACHE", Path.home() / ".cache" / "continuum" / "kafka"))
LIBS = CACHE / f"libs-{KAFKA_VERSION}"
POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>continuum</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{KAFKA_VERSION}</version></dependency>
  </dependencies>
</project>
"""


def java_major() -> int | None:
    java = shutil.which("java")
    if java is None:
        return None
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def jars() -> Path:
    """The directory of Kafka's jars, fetched with Maven on first use (about 45 MB)."""
    if (LIBS / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
        return LIBS
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError(f"Kafka's jars are not in {LIBS} and mvn is not installed to fetch them")
    build = CACHE / "build"
    build.mkdir(parents=True, exist_ok=True)
    (build / "pom.xml").write_text(POM)
    tmp = CACHE / f"libs-{KAFKA_VERSION}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    out = subprocess.run(
        [mvn, "-q", "-B", "dependency:copy-dependencies", f"-DoutputDirectory={tmp}",
         f"-Dmaven.repo.local={CACHE / 'm2'}"],
        cwd=build, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"mvn could not fetch Kafka {KAFKA_VERSION}: {(out.stdout + out.stderr)[-1500:]}")
    tmp.rename(LIBS)
    return LIBS


def unavailable() -> str | None:
    """Why a Kafka broker cannot run here (None: it can)."""
    major = java_major()
    if major is None:
        return "Java is not installed (Kafka needs Java 17+: apt-get install -y openjdk-17-jre-headless)"
    if major < 17:
        return f"Java {major} is too old (Kafka {KAFKA_VERSION} needs Java 17+)"
    if not (LIBS / f"kafka_2.13-{KAFKA_VERSION}.jar").exists() and shutil.which("mvn") is None:
        return f"Kafka's jars are not in {LIBS} and Maven (mvn) is not installed to fetch them"
    return None


@dataclass
class KafkaBroker:
    directory: Path
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def config(self) -> Path:
        lines = [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={self.directory / 'data'}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "log.flush.interval.messages=1",  # fsync every record: what a SIGKILL of the broker would need
        ]
        path = self.directory / "server.properties"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _java(self, *args: str) -> list[str]:
        java = shutil.which("java")
        assert java is not None
        return [java, "-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                "-cp", f"{jars()}/*", *args]  # fmt: skip

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.config()
        if not (self.directory / "data" / "meta.properties").exists():
            out = subprocess.run(
                self._java("kafka.tools.StorageTool", "format", "-t", uuid.uuid4().hex[:22], "-c", str(config)),
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            if out.returncode != 0:
                raise RuntimeError(f"kafka-storage format failed: {(out.stdout + out.stderr)[-1500:]}")
        log = (self.directory / "kafka.log").open("ab")
        self.proc = subprocess.Popen(
            self._java("kafka.Kafka", str(config)), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_port(self.port, timeout=90)
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                f"Kafka did not listen: {(self.directory / 'kafka.log').read_text()[-1500:]}"
            ) from None

    def stop(self) -> None:
        terminate(self.proc, 30)
        self.proc = None

    def url(self, topic: str, **opts: str) -> str:
        return broker_url("kafka", self.port, topic, opts)

    def wait_ready(self, timeout: float = 60) -> None:
        """The broker answers metadata and accepts a record (KRaft elects itself first)."""
        import asyncio

        from aiokafka import AIOKafkaProducer

        async def probe() -> None:
            deadline = time.monotonic() + timeout
            while True:
                producer = AIOKafkaProducer(
                    bootstrap_servers=f"127.0.0.1:{self.port}", request_timeout_ms=5000
                )
                try:
                    await producer.start()
                    await producer.send_and_wait("continuum-ready", b"1")
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
                finally:
                    with contextlib.suppress(Exception):
                        await producer.stop()

        asyncio.run(probe())
