"""deploy/iam/*.json: least-privilege checks, plus moto's IAM policy validator on a rendered copy.

`problems()` is the checker; the last tests feed it modified copies to show it catches what it
must (a new `Resource: "*"`, an action wildcard, a loosened OIDC subject, a stray access key).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from tests.support.helpers import REPO_ROOT

IAM_DIR = REPO_ROOT / "deploy" / "iam"
TRUST_POLICIES = {
    "ci-trust-policy.json",
    "instance-trust-policy.json",
    "s3-replication-trust-policy.json",
}
PERMISSION_POLICIES = {
    "ci-ecr-push-policy.json",
    "ci-deploy-policy.json",
    "instance-role-policy.json",
    "s3-replication-policy.json",
}

# Actions AWS offers no resource-level permissions for: only these may take Resource "*".
WILDCARD_RESOURCE_ACTIONS = frozenset(
    {
        "ecr:GetAuthorizationToken",  # the registry login token
        "cloudwatch:PutMetricData",  # narrowed by a cloudwatch:namespace condition instead
        "ec2:DescribeTags",  # CloudWatch agent: AutoScalingGroupName dimension
        "ssm:GetCommandInvocation",  # CI reads the deploy command's result
        "ssm:ListCommandInvocations",
        "ssm:ListCommands",
        # SSM agent core: the message channels of Run Command and Session Manager
        "ec2messages:AcknowledgeMessage",
        "ec2messages:DeleteMessage",
        "ec2messages:FailMessage",
        "ec2messages:GetEndpoint",
        "ec2messages:GetMessages",
        "ec2messages:SendReply",
        "ssmmessages:CreateControlChannel",
        "ssmmessages:CreateDataChannel",
        "ssmmessages:OpenControlChannel",
        "ssmmessages:OpenDataChannel",
    }
)
# Actions that must carry a condition whenever they appear.
MUST_BE_CONDITIONED = {"cloudwatch:PutMetricData": "cloudwatch:namespace"}

# The placeholders `envsubst` fills in (deploy/iam/README.md); anything else in ${...} would be
# read by IAM as a policy variable.
PLACEHOLDERS = {
    "AWS_ACCOUNT_ID": "123456789012",
    "AWS_REGION": "eu-west-1",
    "ECR_REPOSITORY": "imgclf",
    "GITHUB_REPOSITORY": "example-org/imgclf",
    "GITHUB_ENVIRONMENT": "production",
    "ARTIFACT_BUCKET": "imgclf-artifacts",
    "ARTIFACT_PREFIX": "mlflow",
    "DEPLOY_BUCKET": "imgclf-deploy",
    "BACKUP_BUCKET": "imgclf-artifacts-backup",
}
OIDC = "token.actions.githubusercontent.com"
KEY_PATTERNS = (
    re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"),  # access key ids
    re.compile(r"aws_secret_access_key|secretaccesskey|BEGIN [A-Z ]*PRIVATE KEY", re.IGNORECASE),
)
KEY_ACTIONS = {"iam:CreateAccessKey", "iam:UpdateAccessKey", "iam:CreateLoginProfile"}


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def load(name: str) -> dict[str, Any]:
    return json.loads((IAM_DIR / name).read_text())


def statement_problems(statement: dict[str, Any], trust: bool) -> list[str]:
    sid = statement.get("Sid", "?")
    found = []
    for forbidden in ("NotAction", "NotResource", "NotPrincipal"):
        if forbidden in statement:
            found.append(f"{sid}: {forbidden} grants everything else")
    if statement.get("Effect") not in ("Allow", "Deny"):
        found.append(f"{sid}: Effect must be Allow or Deny")
    actions = as_list(statement.get("Action", []))
    if not actions:
        found.append(f"{sid}: no Action")
    for action in actions:
        if "*" in action:
            found.append(f"{sid}: wildcard action {action!r}")
        if action in KEY_ACTIONS:
            found.append(f"{sid}: {action} makes long-lived credentials")
    if trust:
        if "Principal" not in statement:
            found.append(f"{sid}: a trust statement needs a Principal")
        if statement.get("Principal") == "*" or "*" in as_list(
            statement.get("Principal", {}).get("AWS", [])
        ):
            found.append(f"{sid}: anyone may assume the role")
        return found
    resources = as_list(statement.get("Resource", []))
    if not resources:
        found.append(f"{sid}: no Resource")
    if "*" in resources:
        extra = sorted(set(actions) - WILDCARD_RESOURCE_ACTIONS)
        if extra:
            found.append(f"{sid}: Resource '*' for {extra}, which support resource-level ARNs")
    for action, key in MUST_BE_CONDITIONED.items():
        conditions = json.dumps(statement.get("Condition", {}))
        if action in actions and key not in conditions:
            found.append(f"{sid}: {action} without a {key} condition")
    return found


def oidc_problems(statement: dict[str, Any]) -> list[str]:
    """The GitHub OIDC trust: exact audience, exact subjects of this repository, no wildcards."""
    federated = statement.get("Principal", {}).get("Federated", "")
    if not federated.endswith(f":oidc-provider/{OIDC}"):
        return []
    found = []
    if statement.get("Action") != "sts:AssumeRoleWithWebIdentity":
        found.append("OIDC trust must only allow sts:AssumeRoleWithWebIdentity")
    conditions = statement.get("Condition", {})
    if set(conditions) != {"StringEquals"}:
        found.append(f"OIDC conditions must be StringEquals only (no wildcards), got {conditions}")
    equals = conditions.get("StringEquals", {})
    if equals.get(f"{OIDC}:aud") != "sts.amazonaws.com":
        found.append("OIDC audience must be exactly sts.amazonaws.com")
    subjects = as_list(equals.get(f"{OIDC}:sub", []))
    allowed = {
        "repo:${GITHUB_REPOSITORY}:ref:refs/heads/main",
        "repo:${GITHUB_REPOSITORY}:environment:${GITHUB_ENVIRONMENT}",
    }
    if not subjects or not set(subjects) <= allowed:
        found.append(f"OIDC subjects must be among {sorted(allowed)}, got {subjects}")
    return found


def problems(policy: dict[str, Any], trust: bool) -> list[str]:
    found = []
    if policy.get("Version") != "2012-10-17":
        found.append(f"Version must be 2012-10-17, got {policy.get('Version')!r}")
    statements = as_list(policy.get("Statement", []))
    if not statements:
        found.append("no Statement")
    for statement in statements:
        found += statement_problems(statement, trust)
        if trust:
            found += oidc_problems(statement)
    text = json.dumps(policy)
    for pattern in KEY_PATTERNS:
        if pattern.search(text):
            found.append(f"looks like a long-lived credential: {pattern.pattern}")
    for name in set(re.findall(r"\$\{([^}]*)\}", text)) - set(PLACEHOLDERS):
        found.append(f"unknown placeholder ${{{name}}} (IAM would read it as a policy variable)")
    return found


def render(name: str) -> str:
    text = (IAM_DIR / name).read_text()
    for key, value in PLACEHOLDERS.items():
        text = text.replace("${" + key + "}", value)
    return text


# --- the committed policies -----------------------------------------------------------------


def test_the_policy_set_is_complete() -> None:
    assert {p.name for p in IAM_DIR.glob("*.json")} == TRUST_POLICIES | PERMISSION_POLICIES


@pytest.mark.parametrize("name", sorted(PERMISSION_POLICIES | TRUST_POLICIES))
def test_policy_is_least_privilege(name: str) -> None:
    assert problems(load(name), trust=name in TRUST_POLICIES) == []


@pytest.mark.parametrize("name", sorted(PERMISSION_POLICIES))
def test_every_wildcard_resource_statement_is_justified(name: str) -> None:
    for statement in as_list(load(name)["Statement"]):
        if "*" in as_list(statement["Resource"]):
            assert set(as_list(statement["Action"])) <= WILDCARD_RESOURCE_ACTIONS


def test_policies_are_valid_iam_documents_once_rendered() -> None:
    """moto's IAM validator (element names, ARN format, action prefixes) on rendered copies."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        iam = boto3.client("iam", region_name="us-east-1")
        for name in sorted(PERMISSION_POLICIES):
            rendered = render(name)
            assert "${" not in rendered, name
            iam.create_policy(PolicyName=name.removesuffix(".json"), PolicyDocument=rendered)
        for name in sorted(TRUST_POLICIES):
            iam.create_role(
                RoleName=name.removesuffix(".json"), AssumeRolePolicyDocument=render(name)
            )


def test_ci_can_push_only_to_its_repository() -> None:
    push = load("ci-ecr-push-policy.json")
    arns = {r for s in push["Statement"] for r in as_list(s["Resource"]) if r != "*"}
    assert arns == {"arn:aws:ecr:${AWS_REGION}:${AWS_ACCOUNT_ID}:repository/${ECR_REPOSITORY}"}
    actions = {a for s in push["Statement"] for a in as_list(s["Action"])}
    assert {"ecr:PutImage", "ecr:UploadLayerPart", "ecr:CompleteLayerUpload"} <= actions
    assert not actions & {"ecr:DeleteRepository", "ecr:BatchDeleteImage", "ecr:SetRepositoryPolicy"}


def test_ci_deploys_only_run_shell_script_on_tagged_instances() -> None:
    send = [
        s for s in load("ci-deploy-policy.json")["Statement"] if s["Action"] == "ssm:SendCommand"
    ]
    resources = {r for s in send for r in as_list(s["Resource"])}
    assert resources == {
        "arn:aws:ssm:${AWS_REGION}::document/AWS-RunShellScript",
        "arn:aws:ec2:${AWS_REGION}:${AWS_ACCOUNT_ID}:instance/*",
    }
    instance = next(s for s in send if ":instance/" in s["Resource"])
    assert instance["Condition"] == {"StringEquals": {"ssm:resourceTag/app": "imgclf"}}


def resources_of(policy: dict[str, Any], action: str) -> set[str]:
    return {
        r
        for s in policy["Statement"]
        if action in as_list(s["Action"])
        for r in as_list(s["Resource"])
    }


def test_ci_writes_only_the_deploy_prefix() -> None:
    policy = load("ci-deploy-policy.json")
    writes = {
        a for s in policy["Statement"] for a in as_list(s["Action"]) if a.startswith("s3:")
    } - {"s3:GetObject", "s3:ListBucket"}
    assert writes == {"s3:PutObject"}
    assert resources_of(policy, "s3:PutObject") == {"arn:aws:s3:::${DEPLOY_BUCKET}/imgclf/*"}


def test_instance_role_reads_only_its_prefixes_and_writes_only_imgclf_logs() -> None:
    policy = load("instance-role-policy.json")
    assert resources_of(policy, "s3:GetObject") == {
        "arn:aws:s3:::${ARTIFACT_BUCKET}/${ARTIFACT_PREFIX}/*",
        "arn:aws:s3:::${DEPLOY_BUCKET}/imgclf/*",
    }
    s3_actions = {
        a for s in policy["Statement"] for a in as_list(s["Action"]) if a.startswith("s3:")
    }
    assert s3_actions == {"s3:GetObject", "s3:ListBucket"}
    for statement in policy["Statement"]:
        if statement["Action"] == "s3:ListBucket":
            assert statement["Condition"]["StringLike"]["s3:prefix"], statement["Sid"]
    for resource in resources_of(policy, "logs:PutLogEvents"):
        assert ":log-group:/imgclf/" in resource
    metrics = next(s for s in policy["Statement"] if s["Action"] == "cloudwatch:PutMetricData")
    assert metrics["Condition"]["StringLike"]["cloudwatch:namespace"] == ["imgclf", "imgclf/*"]


def test_only_the_deploy_role_records_the_release_new_instances_boot() -> None:
    """/imgclf/deploy/production names the commit, image digest and bundle sha256 a new instance
    checks before it runs anything: CI writes only that prefix, an instance only reads."""
    parameters = "arn:aws:ssm:${AWS_REGION}:${AWS_ACCOUNT_ID}:parameter/imgclf"
    ci = load("ci-deploy-policy.json")
    assert resources_of(ci, "ssm:PutParameter") == {f"{parameters}/deploy/*"}
    instance = load("instance-role-policy.json")
    assert f"{parameters}/*" in resources_of(instance, "ssm:GetParameter")
    writes = {
        a
        for s in instance["Statement"]
        for a in as_list(s["Action"])
        if a.startswith(("ssm:Put", "ssm:Delete", "ssm:Label", "ssm:AddTags"))
    }
    assert writes == set()


def test_replication_writes_only_the_backup_and_never_deletes() -> None:
    """The backup must survive a deletion (or a compromise) in the primary bucket."""
    policy = load("s3-replication-policy.json")
    actions = {a for s in policy["Statement"] for a in as_list(s["Action"])}
    assert not {a for a in actions if "Delete" in a}
    for action in ("s3:ReplicateObject", "s3:ReplicateTags"):
        assert resources_of(policy, action) == {"arn:aws:s3:::${BACKUP_BUCKET}/*"}


# --- the checker catches what it must -------------------------------------------------------


def test_checker_flags_a_new_wildcard_resource() -> None:
    policy = copy.deepcopy(load("instance-role-policy.json"))
    s3_read = next(s for s in policy["Statement"] if s["Action"] == "s3:GetObject")
    s3_read["Resource"] = "*"
    assert any("s3:GetObject" in p for p in problems(policy, trust=False))


def test_checker_flags_an_action_added_to_a_wildcard_statement() -> None:
    policy = copy.deepcopy(load("ci-ecr-push-policy.json"))
    policy["Statement"][0]["Action"] = ["ecr:GetAuthorizationToken", "ecr:PutImage"]
    assert any("ecr:PutImage" in p for p in problems(policy, trust=False))


@pytest.mark.parametrize("action", ["*", "*:*", "s3:*", "ecr:Put*"])
def test_checker_flags_action_wildcards(action: str) -> None:
    policy = copy.deepcopy(load("ci-deploy-policy.json"))
    policy["Statement"][0]["Action"] = action
    assert any("wildcard action" in p for p in problems(policy, trust=False))


def test_checker_flags_a_metric_statement_without_namespace() -> None:
    policy = copy.deepcopy(load("instance-role-policy.json"))
    metrics = next(s for s in policy["Statement"] if s["Action"] == "cloudwatch:PutMetricData")
    del metrics["Condition"]
    assert any("cloudwatch:namespace" in p for p in problems(policy, trust=False))


@pytest.mark.parametrize(
    "subject",
    [
        "repo:${GITHUB_REPOSITORY}:*",
        "repo:other/repo:ref:refs/heads/main",
        "repo:${GITHUB_REPOSITORY}:pull_request",
    ],
)
def test_checker_flags_a_loosened_oidc_subject(subject: str) -> None:
    policy = copy.deepcopy(load("ci-trust-policy.json"))
    policy["Statement"][0]["Condition"]["StringEquals"][f"{OIDC}:sub"] = [subject]
    assert problems(policy, trust=True)


def test_checker_flags_stringlike_and_a_missing_audience() -> None:
    policy = copy.deepcopy(load("ci-trust-policy.json"))
    condition = policy["Statement"][0]["Condition"]
    condition["StringLike"] = {f"{OIDC}:sub": "repo:${GITHUB_REPOSITORY}:*"}
    del condition["StringEquals"][f"{OIDC}:aud"]
    found = problems(policy, trust=True)
    assert any("StringEquals only" in p for p in found)
    assert any("audience" in p for p in found)


def test_checker_flags_long_lived_keys_and_unknown_placeholders() -> None:
    policy = copy.deepcopy(load("ci-deploy-policy.json"))
    policy["Statement"][0]["Sid"] = "AKIAIOSFODNN7EXAMPLE"
    policy["Statement"][1]["Resource"] = "arn:aws:ec2:${aws:username}:1:instance/*"
    policy["Statement"].append(
        {"Effect": "Allow", "Action": "iam:CreateAccessKey", "Resource": "arn:aws:iam::1:user/ci"}
    )
    found = problems(policy, trust=False)
    assert any("credential" in p for p in found)
    assert any("placeholder" in p for p in found)
    assert any("long-lived" in p for p in found)


def test_checker_flags_an_open_trust_policy() -> None:
    policy = copy.deepcopy(load("instance-trust-policy.json"))
    policy["Statement"][0]["Principal"] = {"AWS": "*"}
    assert any("anyone" in p for p in problems(policy, trust=True))
