"""infra/compose.yaml without Docker: the Compose schema, references between services, and
secrets that come only from the environment.

`data/compose_spec.json` is the Compose Specification schema shipped in docker-compose 1.29.2
(Apache-2.0). It predates the top-level `name` key, which the test removes before validating.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from ladnn.config import load_config, read_servers_file
from ladnn.servers import check_servers

INFRA = Path(__file__).resolve().parents[1] / "infra"
SCHEMA = Path(__file__).resolve().parent / "data" / "compose_spec.json"
# ${NAME}, ${NAME:-default}, ${NAME:?message}; `$$` escapes a dollar for the container's shell.
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY")
SERVICES = {"postgres", "minio", "mlflow", "prefect-server", "prefect-worker", "dashboard"}


@pytest.fixture(scope="module")
def compose_text() -> str:
    return (INFRA / "compose.yaml").read_text()


@pytest.fixture(scope="module")
def compose(compose_text) -> dict:
    return yaml.safe_load(compose_text)


def _env_example() -> dict[str, str]:
    values = {}
    for line in (INFRA / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def test_compose_matches_schema(compose):
    schema = json.loads(SCHEMA.read_text())
    document = {key: value for key, value in compose.items() if key != "name"}
    jsonschema.validate(document, schema)


def test_compose_has_every_service(compose):
    assert set(compose["services"]) >= SERVICES


def test_dependencies_name_services(compose):
    services = compose["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)


def test_named_volumes_declared(compose):
    declared = set(compose.get("volumes", {}))
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/", "$")):
                continue
            assert source in declared, (name, volume)


def test_mounted_files_exist(compose):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (INFRA / source).exists(), (name, source)
        build = service.get("build")
        if build:
            context = INFRA / build["context"]
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), (name, dockerfile)


def test_variables_documented_in_example(compose_text):
    used = set(VARIABLE.findall(compose_text))
    documented = set(_env_example())
    assert used, "compose.yaml uses no variables"
    assert used <= documented, sorted(used - documented)


def test_secrets_only_from_environment(compose):
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert VARIABLE.fullmatch(str(value)), (name, key, value)


def test_example_values_are_placeholders():
    for name, value in _env_example().items():
        if SECRET_NAME.search(name):
            assert value.startswith("replace-with-"), name


def test_mlflow_server_settings(compose):
    command = compose["services"]["mlflow"]["command"]
    assert command[:2] == ["mlflow", "server"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert command[command.index("--backend-store-uri") + 1].startswith("postgresql")
    assert command[command.index("--artifacts-destination") + 1].startswith("s3://")


def test_prefect_server_on_postgres(compose):
    environment = compose["services"]["prefect-server"]["environment"]
    url = environment["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://")


def test_worker_uses_process_pool(compose):
    command = compose["services"]["prefect-worker"]["command"]
    assert command[command.index("--type") + 1] == "process"


@pytest.mark.parametrize("name", ["servers.compose.yaml", "servers.example.yaml"])
def test_servers_files_valid(name, monkeypatch):
    path = INFRA / name
    values = read_servers_file(path)
    assert values["tracking"]["tracking_uri"].startswith("http")
    monkeypatch.setenv("LADNN_SERVERS", str(path))
    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)
    check_servers(load_config())


def test_compose_servers_file_names_services(compose):
    values = read_servers_file(INFRA / "servers.compose.yaml")
    hosts = {
        re.match(r"[a-z+0-9]+://(?:[^@/]+@)?([^:/]+)", url).group(1)
        for section in values.values()
        for url in section.values()
        if url and not url.startswith("s3://")
    }
    assert hosts <= set(compose["services"]), hosts - set(compose["services"])


def test_k8s_job_runs_torchrun():
    [job] = list(yaml.safe_load_all((INFRA / "k8s" / "train-job.yaml").read_text()))
    assert job["kind"] == "Job"
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["command"][0] == "torchrun"
    assert container["command"][-2:] == ["ladnn", "train"]
    environment = {item["name"]: item.get("value") for item in container["env"]}
    assert environment["LADNN_SERVERS"].startswith("/etc/ladnn/")
