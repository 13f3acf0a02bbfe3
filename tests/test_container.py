"""The container image (Dockerfile): build it with container/build.sh, serve a tiny index made here from the
image, and check /health, one /search, a bad request (4xx), the HEALTHCHECK, the non-root user, a script
run by the same image, a clean exit on SIGTERM (0 for the service, 143 for a training run).

Builds an image (minutes), so it runs only with TWO_TOWER_CONTAINER_TEST=1 (.ci/run's container step) and
skips where no container engine works (a podman binary, or a docker client that reaches a daemon)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

if os.environ.get("TWO_TOWER_CONTAINER_TEST") != "1":
    pytest.skip("container image test: builds an image (minutes); run with TWO_TOWER_CONTAINER_TEST=1 (.ci/run does)", allow_module_level=True)

import httpx

from tests.conftest import ROOT, build_tiny_index

TAG = "two-tower:test"

# the image build (a fixture; its own limit 3600 s) counts towards the first test's time: past the suite's 900 s
pytestmark = pytest.mark.timeout(4000)


def find_engine() -> str | None:
    """podman if installed, else docker if its client reaches a daemon, else None."""
    if shutil.which("podman"):
        return "podman"
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0:
        return "docker"
    return None


ENGINE = find_engine()
if ENGINE is None:
    pytest.skip("container image test: no container engine (no podman, no docker daemon)", allow_module_level=True)


def engine(*args: str) -> list[str]:
    """The engine command; podman with this machine's flags (runc: crun fails on hybrid cgroups), see PODMAN_FLAGS."""
    if ENGINE == "podman":
        return ["podman", *shlex.split(os.environ.get("PODMAN_FLAGS", "--runtime=runc --cgroup-manager=cgroupfs")), *args]
    return ["docker", *args]


def run_flags(port: int) -> list[str]:
    """podman here: host network (-p is ignored there) with the service's port set by TWO_TOWER_PORT, and
    explicit ulimits (the defaults are refused); docker: the port published as documented."""
    if ENGINE == "podman":
        return ["--network=host", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "-e", f"TWO_TOWER_PORT={port}"]
    return ["-p", f"127.0.0.1:{port}:8000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def image() -> str:
    start = time.monotonic()
    result = subprocess.run([str(ROOT / "container" / "build.sh"), TAG], cwd=ROOT, env={**os.environ, "ENGINE": ENGINE}, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    print(f"\ncontainer: build {time.monotonic() - start:.1f}s")
    return TAG


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, tiny_run) -> tuple[Path, list[str]]:
    """An index folder built from the shared tiny checkpoint over the synthetic validation passages; and the passages."""
    index, texts = build_tiny_index(tmp_path_factory.mktemp("container"), tiny_run)
    for path in [index, *index.rglob("*")]:  # the container's user (uid 10001) reads it
        path.chmod(0o755 if path.is_dir() else 0o644)
    return index, texts


def test_image_has_the_healthcheck_and_a_non_root_user(image):
    inspected = json.loads(subprocess.run(engine("image", "inspect", image), capture_output=True, text=True, check=True).stdout)[0]
    config = inspected["Config"]
    healthcheck = config.get("Healthcheck") or inspected.get("Healthcheck")  # docker: under Config; podman: beside it
    assert healthcheck and "/health" in " ".join(healthcheck["Test"])  # an OCI-format build would have dropped it
    assert config["User"].split(":")[0] == "10001"
    assert "8000/tcp" in config["ExposedPorts"]


def test_the_image_runs_the_scripts_with_the_configs(image):
    """train.py given as the command runs that script (not the service) with the image's conf/; caches go
    under the user's writable /work (TWO_TOWER_CACHE)."""
    result = subprocess.run(engine("run", "--rm", *run_flags(free_port()), image, "train.py", "--cfg", "job", "--resolve", "-p", "paths"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0] == "# @package paths", result.stdout[-2000:]
    assert "cache_dir: /work/.cache/two_tower" in result.stdout, result.stdout[-2000:]
    # ~key is a setting of serve.py's (a Hydra deletion, which it refuses in one line), not a command (exit 127, "exec: ~rerank:
    # not found", before: a probe)
    result = subprocess.run(engine("run", "--rm", *run_flags(free_port()), image, "~rerank"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: ~rerank: settings cannot be removed"), result.stderr[-2000:]


def test_container_serves_the_index_and_stops_cleanly_on_sigterm(image, index_dir):
    index, texts = index_dir
    port, name = free_port(), f"two-tower-test-{uuid.uuid4().hex[:8]}"
    base = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    subprocess.run(engine("run", "-d", "--name", name, *run_flags(port), "-v", f"{index}:/index:ro", image), check=True, capture_output=True, text=True, timeout=300)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                health = httpx.get(f"{base}/health", timeout=5)
                break
            except httpx.TransportError:
                state = subprocess.run(engine("inspect", "--format", "{{.State.Running}}", name), capture_output=True, text=True).stdout.strip()
                logs = subprocess.run(engine("logs", name), capture_output=True, text=True)
                assert state == "true", f"the container stopped: {logs.stdout[-2000:]}{logs.stderr[-2000:]}"
                assert time.monotonic() < deadline, f"no answer on {base} in 180s: {logs.stderr[-2000:]}"
                time.sleep(0.2)
        assert health.status_code == 200, health.text
        assert health.json()["passages"] == len(texts)
        assert health.json()["index"]["path"] == "/index"

        answer = httpx.get(f"{base}/search", params={"q": texts[0], "k": 3}, timeout=30)
        cold_start = time.monotonic() - start
        assert answer.status_code == 200, answer.text
        hits = answer.json()["hits"]
        assert len(hits) == 3 and all(hit["text"] in texts for hit in hits)

        bad = httpx.get(f"{base}/search", params={"q": "garden", "k": 0}, timeout=30)
        assert bad.status_code == 422 and "k: Input should be greater than or equal to 1" in bad.json()["error"], bad.text

        if ENGINE == "podman":  # the image's HEALTHCHECK command, run now (docker runs it only every 30 s)
            check = subprocess.run(engine("healthcheck", "run", name), capture_output=True, text=True, timeout=60)
            assert check.returncode == 0, (check.stdout, check.stderr)

        stop = time.monotonic()
        subprocess.run(engine("kill", "--signal", "TERM", name), check=True, capture_output=True, timeout=60)
        waited = subprocess.run(engine("wait", name), capture_output=True, text=True, timeout=60)
        stopped = time.monotonic() - stop
        logs = subprocess.run(engine("logs", name), capture_output=True, text=True).stderr
        assert waited.stdout.strip() == "0", f"exit status {waited.stdout.strip()}: {logs[-2000:]}"
        assert stopped < 15, f"took {stopped:.1f}s to stop"
        assert "Shutting down" in logs and "Finished server process" in logs, logs[-2000:]
        print(f"\ncontainer: cold start to first /search answer {cold_start:.1f}s; SIGTERM to exit 0 in {stopped:.1f}s")
    finally:
        subprocess.run(engine("rm", "-f", name), capture_output=True, timeout=120)


def test_a_stop_during_start_up_ends_the_container_with_status_0(image, index_dir):
    """SIGTERM a second after start, before uvicorn has its handler: tini passes it on and the container ends
    (status 0). A Python PID 1 ignored it, so `docker stop` waited its 10 s and sent SIGKILL (137)."""
    index, _ = index_dir
    port, name = free_port(), f"two-tower-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(engine("run", "-d", "--name", name, *run_flags(port), "-v", f"{index}:/index:ro", image), check=True, capture_output=True, text=True, timeout=300)
    try:
        time.sleep(1)
        subprocess.run(engine("kill", "--signal", "TERM", name), check=True, capture_output=True, timeout=60)
        waited = subprocess.run(engine("wait", name), capture_output=True, text=True, timeout=120)  # a hang guard: it was ignored for good
        assert waited.stdout.strip() == "0", waited
    finally:
        subprocess.run(engine("rm", "-f", name), capture_output=True, timeout=120)


def test_a_training_run_stopped_in_the_container_exits_143_not_0(image):
    """`docker stop` during train.py: the run saves its checkpoint and the container ends with train.py's 143, so
    `docker run ... train.py && docker run ... index.py` stops there (PID 1's tini -e 143 made it 0, a
    preempted run that looked finished). A stopped service still exits 0 (the tests above)."""
    name = f"two-tower-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(engine("run", "-d", "--name", name, *run_flags(free_port()), image, "train.py", "data=synthetic", "logger=csv",
                          "trainer.max_epochs=500", "threads=1"), check=True, capture_output=True, text=True, timeout=300)
    try:
        deadline = time.monotonic() + 240
        while "Model:" not in (logs := subprocess.run(engine("logs", name), capture_output=True, text=True)).stdout + logs.stderr:
            state = subprocess.run(engine("inspect", "--format", "{{.State.Running}}", name), capture_output=True, text=True).stdout.strip()
            assert state == "true" and time.monotonic() < deadline, f"training did not start: {logs.stdout[-2000:]}{logs.stderr[-2000:]}"
            time.sleep(0.5)
        time.sleep(3)
        subprocess.run(engine("kill", "--signal", "TERM", name), check=True, capture_output=True, timeout=60)
        waited = subprocess.run(engine("wait", name), capture_output=True, text=True, timeout=120)
        logs = subprocess.run(engine("logs", name), capture_output=True, text=True)
        assert waited.stdout.strip() == "143", f"exit status {waited.stdout.strip()}: {logs.stdout[-1500:]}{logs.stderr[-1500:]}"
        assert "Stopped by SIGTERM" in logs.stdout + logs.stderr, logs.stderr[-2000:]
    finally:
        subprocess.run(engine("rm", "-f", name), capture_output=True, timeout=120)


def test_a_read_only_root_without_a_writable_tmp_is_one_line(image, index_dir):
    index, _ = index_dir
    no_tmpfs = ["--read-only", "--read-only-tmpfs=false"] if ENGINE == "podman" else ["--read-only"]
    result = subprocess.run(engine("run", "--rm", *run_flags(free_port()), *no_tmpfs, "-v", f"{index}:/index:ro", image), capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and errors == ["error: /tmp is not writable: with a read-only root file system give it a tmpfs (docker run --read-only --tmpfs /tmp ...)"], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
