"""Checks infra/template.yaml for what a linter cannot know about this project.

- every crate in functions/ is a function of the template (Binary = crate name);
- no IAM statement allows a wildcard action;
- every queue has a dead-letter queue, and every dead-letter queue an alarm on its depth;
- every SQS event source reports batch item failures;
- the webhook route is the only HTTP route without the JWT authorizer, and admin routes need
  the loyalty/admin scope.

Exit status 1 with one line per finding.
"""

import pathlib
import sys

from cfnlint.decode import cfn_yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> int:
    template = cfn_yaml.load(str(ROOT / "infra" / "template.yaml"))
    resources = template["Resources"]
    findings = []

    functions = {
        name: r for name, r in resources.items() if r["Type"] == "AWS::Serverless::Function"
    }
    binaries = {r.get("Metadata", {}).get("BuildProperties", {}).get("Binary") for r in functions.values()}
    for crate in sorted(p.name for p in (ROOT / "functions").iterdir() if (p / "Cargo.toml").exists()):
        if crate not in binaries:
            findings.append(f"functions/{crate} has no function in the template")

    for name, r in functions.items():
        for policy in r["Properties"].get("Policies", []):
            if not isinstance(policy, dict):
                findings.append(f"{name}: policy template {policy!r}; write the statements out")
                continue
            for statement in policy.get("Statement", []):
                actions = statement.get("Action", [])
                actions = [actions] if isinstance(actions, str) else actions
                for action in actions:
                    if "*" in str(action):
                        findings.append(f"{name}: wildcard action {action}")

    queues = {name: r for name, r in resources.items() if r["Type"] == "AWS::SQS::Queue"}
    dead_letter_targets = set()
    for name, r in queues.items():
        redrive = r.get("Properties", {}).get("RedrivePolicy")
        if redrive:
            target = redrive["deadLetterTargetArn"]
            dead_letter_targets.add(target["Fn::GetAtt"][0] if isinstance(target, dict) else target)
    alarmed = set()
    for r in resources.values():
        if r["Type"] != "AWS::CloudWatch::Alarm":
            continue
        for dimension in r["Properties"].get("Dimensions", []):
            value = dimension.get("Value")
            if isinstance(value, dict) and "Fn::GetAtt" in value:
                alarmed.add(value["Fn::GetAtt"][0])
    for name in queues:
        if name in dead_letter_targets:
            if name not in alarmed:
                findings.append(f"{name}: a dead-letter queue without an alarm")
        elif not queues[name].get("Properties", {}).get("RedrivePolicy"):
            findings.append(f"{name}: no dead-letter queue")

    for name, r in functions.items():
        for event_name, event in r["Properties"].get("Events", {}).items():
            properties = event.get("Properties", {})
            if event["Type"] == "SQS":
                if "ReportBatchItemFailures" not in properties.get("FunctionResponseTypes", []):
                    findings.append(f"{name}.{event_name}: does not report batch item failures")
            if event["Type"] == "HttpApi":
                path = properties["Path"]
                auth = properties.get("Auth", {})
                open_route = auth.get("Authorizer") == "NONE"
                if path.startswith("/webhooks/") != open_route:
                    findings.append(f"{name}.{event_name}: {path} must {'not ' if open_route else ''}skip the JWT authorizer")
                admin = path in ("/v1/programs/{program}", "/v1/programs/{program}/events") or "/members/" in path or "/coupons/" in path or "/campaigns/" in path or path.startswith("/v1/programs/{program}/redemptions/")
                if admin and "loyalty/admin" not in auth.get("AuthorizationScopes", []):
                    findings.append(f"{name}.{event_name}: admin route {path} without the loyalty/admin scope")

    findings.extend(check_openapi())

    for finding in findings:
        print(finding)
    if not findings:
        print(f"template: {len(functions)} functions, {len(queues)} queues; no findings")
    return 1 if findings else 0


def check_openapi() -> list:
    """infra/openapi.yaml parses, and every operation answers with a documented status."""
    import yaml

    findings = []
    try:
        spec = yaml.safe_load((ROOT / "infra" / "openapi.yaml").read_text())
    except yaml.YAMLError as e:
        return [f"infra/openapi.yaml is not valid YAML: {e}"]
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            if not operation.get("responses"):
                findings.append(f"openapi: {method.upper()} {path} has no responses")
    return findings


if __name__ == "__main__":
    sys.exit(main())
