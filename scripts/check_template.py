"""Checks infra/template.yaml for what a linter cannot know about this project.

- every crate in functions/ is a function of the template (Binary = crate name);
- no IAM statement allows a wildcard action;
- every queue has a dead-letter queue, and every dead-letter queue an alarm on its depth;
- every SQS event source reports batch item failures;
- the webhook route is the only HTTP route without the JWT authorizer, and admin routes need
  the loyalty/admin scope;
- the console: its bucket blocks all public access and only the CloudFront distribution may
  read it (through an origin access control, no legacy identity); the API's paths reach the HTTP
  API uncached; the console's client is in the JWT authorizer's audience.

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

    findings.extend(check_console(resources))
    findings.extend(check_openapi())

    for finding in findings:
        print(finding)
    if not findings:
        distributions = sum(r["Type"] == "AWS::CloudFront::Distribution" for r in resources.values())
        print(f"template: {len(functions)} functions, {len(queues)} queues, {distributions} distribution(s); no findings")
    return 1 if findings else 0


CACHING_DISABLED = "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"
CLOUDFRONT = "cloudfront.amazonaws.com"


def logical_of(value) -> str | None:
    """The resource a !Ref or !GetAtt names."""
    if isinstance(value, dict) and "Ref" in value:
        return value["Ref"]
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return value["Fn::GetAtt"][0]
    return None


def refs_in(value) -> set:
    """Every resource a !Ref names anywhere in value (both branches of an !If included)."""
    if isinstance(value, dict):
        return ({value["Ref"]} if "Ref" in value else set()).union(*(refs_in(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(refs_in(v) for v in value))
    return set()


def check_console(resources: dict) -> list:
    """The console's bucket, its policy, the distribution in front of it and the API, and its
    client."""
    findings = []
    of_type = lambda kind: {n: r for n, r in resources.items() if r["Type"] == kind}  # noqa: E731
    buckets = of_type("AWS::S3::Bucket")
    distributions = of_type("AWS::CloudFront::Distribution")
    access_controls = of_type("AWS::CloudFront::OriginAccessControl")
    http_apis = of_type("AWS::Serverless::HttpApi")

    for name, r in buckets.items():
        block = r.get("Properties", {}).get("PublicAccessBlockConfiguration", {})
        for flag in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"):
            if block.get(flag) is not True:
                findings.append(f"{name}: PublicAccessBlockConfiguration.{flag} must be true")

    for name in of_type("AWS::CloudFront::CloudFrontOriginAccessIdentity"):
        findings.append(f"{name}: a legacy origin access identity; S3 origins use an origin access control")

    # Which distribution reads which bucket.
    readers = {}
    for name, r in distributions.items():
        config = r["Properties"]["DistributionConfig"]
        origins = {o["Id"]: o for o in config.get("Origins", [])}
        for origin in origins.values():
            bucket = logical_of(origin.get("DomainName"))
            if "S3OriginConfig" not in origin and bucket not in buckets:
                continue
            readers.setdefault(bucket, set()).add(name)
            where = f"{name}: origin {origin['Id']}"
            if origin.get("S3OriginConfig", {}).get("OriginAccessIdentity"):
                findings.append(f"{where}: a legacy origin access identity; use the origin access control")
            control = logical_of(origin.get("OriginAccessControlId"))
            if control not in access_controls:
                findings.append(f"{where}: an S3 origin without an origin access control (OriginAccessControlId)")
            elif access_controls[control]["Properties"]["OriginAccessControlConfig"].get("OriginAccessControlOriginType") != "s3":
                findings.append(f"{where}: origin access control {control} is not of type s3")

        api_origins = {
            oid
            for oid, o in origins.items()
            if isinstance(o.get("DomainName"), dict)
            and any(o["DomainName"].get("Fn::Sub", "").startswith(f"${{{api}}}.execute-api.") for api in http_apis)
        }
        behaviours = {b["PathPattern"]: b for b in config.get("CacheBehaviors", [])}
        for pattern in ("/v1/*", "/webhooks/*"):
            behaviour = behaviours.get(pattern)
            if behaviour is None:
                findings.append(f"{name}: no {pattern} behaviour; the console reaches the API on its own origin")
                continue
            if behaviour["TargetOriginId"] not in api_origins:
                findings.append(f"{name}: {pattern} goes to origin {behaviour['TargetOriginId']}, not to the HTTP API")
            if behaviour.get("CachePolicyId") != CACHING_DISABLED:
                findings.append(f"{name}: {pattern} must use the managed CachingDisabled cache policy ({CACHING_DISABLED})")

    policies = {}
    for name, r in of_type("AWS::S3::BucketPolicy").items():
        policies.setdefault(logical_of(r["Properties"]["Bucket"]), []).append((name, r))
    for bucket in buckets:
        if bucket not in policies:
            findings.append(f"{bucket}: no bucket policy; CloudFront cannot read it")
        for name, r in policies.get(bucket, []):
            statements = r["Properties"]["PolicyDocument"].get("Statement", [])
            if not statements:
                findings.append(f"{name}: no statements")
            for i, statement in enumerate(statements):
                where = f"{name}: statement {statement.get('Sid', i)}"
                if statement.get("Principal") != {"Service": CLOUDFRONT}:
                    findings.append(f"{where}: the only principal may be the {CLOUDFRONT} service, not {statement.get('Principal')!r}")
                actions = statement.get("Action")
                if (actions if isinstance(actions, list) else [actions]) != ["s3:GetObject"]:
                    findings.append(f"{where}: CloudFront may only s3:GetObject, not {actions!r}")
                source = statement.get("Condition", {}).get("StringEquals", {}).get("AWS:SourceArn")
                text = source.get("Fn::Sub", "") if isinstance(source, dict) else ""
                if not any(text == f"arn:${{AWS::Partition}}:cloudfront::${{AWS::AccountId}}:distribution/${{{d}}}" for d in readers.get(bucket, ())):
                    findings.append(
                        f"{where}: must be conditioned on StringEquals AWS:SourceArn = the ARN of the distribution "
                        f"that reads {bucket} ({', '.join(sorted(readers.get(bucket, ()))) or 'none does'})"
                    )

    if "ConsoleClient" in resources:
        audience = []
        for api, r in http_apis.items():
            for authorizer, spec in r["Properties"].get("Auth", {}).get("Authorizers", {}).items():
                audience.append((f"{api}.{authorizer}", refs_in(spec.get("JwtConfiguration", {}).get("audience"))))
        if not audience:
            findings.append("ConsoleClient: no JWT authorizer whose audience it could be in")
        for where, refs in audience:
            if "ConsoleClient" not in refs:
                findings.append(f"{where}: ConsoleClient is not in the audience; the console's tokens would be refused")

    return findings


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
