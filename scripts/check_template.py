"""Checks infra/template.yaml for what a linter cannot know about this project.

- every crate in functions/ is a function of the template (Binary = crate name);
- no IAM statement allows a wildcard action;
- every queue has a dead-letter queue, and every dead-letter queue an alarm on its depth;
- every SQS event source reports batch item failures;
- every HTTP route has the JWT authorizer, and admin routes need the loyalty/admin scope; the
  webhooks enter by webhook-ingest's function URL, the only function with one (public: the
  function checks each platform's signature); every other method and path (ANY /{proxy+}) goes
  to member-api, whose router answers 404 and 405 as problems;
- the console: its bucket blocks all public access and only the CloudFront distribution may
  read it (through an origin access control, no legacy identity); /v1/* reaches the HTTP API and
  /webhooks/* the webhooks' function URL, uncached; the console's client is in the JWT authorizer's audience;
- observability: X-Ray tracing is active on every function; an SNS topic, with an email
  subscription when AlarmEmail is given, is in every alarm's AlarmActions and OKActions; the
  rejected-event rate and failed job runs are alarmed on the functions' own metrics (namespace
  Loyalty); the dashboard's body is JSON once its !Sub variables are filled in, has its six
  widgets, and its errors, durations and dead-letter widgets name every function and dead-letter
  queue.

Exit status 1 with one line per finding.
"""

import json
import pathlib
import re
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

    for name, r in queues.items():
        props = r.get("Properties", {})
        if props.get("FifoQueue") and name not in dead_letter_targets:
            if props.get("FifoThroughputLimit") != "perMessageGroupId" or props.get("DeduplicationScope") != "messageGroup":
                findings.append(f"{name}: a FIFO queue without high throughput (FifoThroughputLimit perMessageGroupId, DeduplicationScope messageGroup)")

    for name, r in functions.items():
        for event_name, event in r["Properties"].get("Events", {}).items():
            properties = event.get("Properties", {})
            if event["Type"] == "SQS":
                if "ReportBatchItemFailures" not in properties.get("FunctionResponseTypes", []):
                    findings.append(f"{name}.{event_name}: does not report batch item failures")
            if event["Type"] == "HttpApi":
                path = properties["Path"]
                auth = properties.get("Auth", {})
                if auth.get("Authorizer") == "NONE":
                    findings.append(f"{name}.{event_name}: {path} must not skip the JWT authorizer")
                if path.startswith("/webhooks/"):
                    findings.append(f"{name}.{event_name}: {path} on the HTTP API; webhooks enter by the function URL")
                # Every route is an operator's but a member's own (`/me`) and the catch-all that
                # answers unknown paths with a problem: a route added without the scope would
                # let any member's token reach the code's own check alone.
                scopes = auth.get("AuthorizationScopes", [])
                if path == "/{proxy+}":
                    pass
                elif is_member_route(path):
                    if "loyalty/admin" in scopes:
                        findings.append(f"{name}.{event_name}: member route {path} with the loyalty/admin scope")
                elif "loyalty/admin" not in scopes:
                    findings.append(f"{name}.{event_name}: admin route {path} without the loyalty/admin scope")

    findings.extend(check_function_urls(functions))
    findings.extend(check_capacity(template))
    findings.extend(check_console(resources))
    findings.extend(check_observability(template))
    findings.extend(check_openapi())
    findings.extend(check_routes_documented(functions))

    for finding in findings:
        print(finding)
    if not findings:
        distributions = sum(r["Type"] == "AWS::CloudFront::Distribution" for r in resources.values())
        alarms = sum(r["Type"] == "AWS::CloudWatch::Alarm" for r in resources.values())
        print(f"template: {len(functions)} functions, {len(queues)} queues, {distributions} distribution(s), {alarms} alarms; no findings")
    return 1 if findings else 0


def check_capacity(template: dict) -> list:
    """The table is on demand or, with TableCapacity provisioned, has a floor of capacity on the
    table and on every index and a target-tracking policy per table or index and dimension: an
    index left without auto scaling would throttle the table's writes under load."""
    resources = template["Resources"]
    table_name, table = next((n, r) for n, r in resources.items() if r["Type"] == "AWS::DynamoDB::Table")
    props = table["Properties"]
    findings = []
    mode = props.get("BillingMode")
    if mode != {"Fn::If": ["IsProvisioned", "PROVISIONED", "PAY_PER_REQUEST"]}:
        return [f"{table_name}: BillingMode {mode!r}; on demand unless TableCapacity is provisioned"]
    if template.get("Conditions", {}).get("IsProvisioned") != {"Fn::Equals": [{"Ref": "TableCapacity"}, "provisioned"]}:
        findings.append("IsProvisioned must be TableCapacity = provisioned")
    scaled = {}
    for name, r in resources.items():
        if r["Type"] != "AWS::ApplicationAutoScaling::ScalableTarget":
            continue
        p = r["Properties"]
        if r.get("Condition") != "IsProvisioned":
            findings.append(f"{name}: scales capacity without the IsProvisioned condition")
        dimension = p.get("ScalableDimension", "")
        unit = dimension.rsplit(":", 1)[-1].removesuffix("CapacityUnits")
        if p.get("MaxCapacity") != {"Ref": f"Max{unit}Capacity"}:
            findings.append(f"{name}: MaxCapacity is not Max{unit}Capacity")
        scaled[(resource_id_of(p.get("ResourceId"), table_name), dimension)] = name
    policies = {
        logical_of(r["Properties"].get("ScalingTargetId")): r
        for r in resources.values()
        if r["Type"] == "AWS::ApplicationAutoScaling::ScalingPolicy"
    }
    units = [("table", "table", props.get("ProvisionedThroughput"))] + [
        (f"index/{gsi['IndexName']}", "index", gsi.get("ProvisionedThroughput"))
        for gsi in props.get("GlobalSecondaryIndexes", [])
    ]
    for path, kind, throughput in units:
        if not (isinstance(throughput, dict) and throughput.get("Fn::If", [None])[0] == "IsProvisioned"
                and throughput["Fn::If"][2] == {"Ref": "AWS::NoValue"}):
            findings.append(f"{table_name} {path}: no ProvisionedThroughput under IsProvisioned")
        for unit in ("Read", "Write"):
            target = scaled.get((path, f"dynamodb:{kind}:{unit}CapacityUnits"))
            if target is None:
                findings.append(f"{table_name} {path}: {unit.lower()} capacity is not auto scaled")
                continue
            policy = policies.get(target, {}).get("Properties", {})
            metric = (
                policy.get("TargetTrackingScalingPolicyConfiguration", {})
                .get("PredefinedMetricSpecification", {})
                .get("PredefinedMetricType")
            )
            if policy.get("PolicyType") != "TargetTrackingScaling" or metric != f"DynamoDB{unit}CapacityUtilization":
                findings.append(f"{target}: no target-tracking policy on {unit.lower()} utilisation")
    findings.extend(check_throttle_alarm(resources, table_name, props))
    return findings


def check_throttle_alarm(resources: dict, table_name: str, props: dict) -> list:
    """An alarm under IsProvisioned reads the table's read and write throttle events and each
    index's write throttle events (the table's own leave the indexes out), each filled with 0
    where it has no data: a sum with a missing term has no data, which would not breach."""
    wanted = [("WriteThrottleEvents", None), ("ReadThrottleEvents", None)] + [
        ("WriteThrottleEvents", gsi["IndexName"]) for gsi in props.get("GlobalSecondaryIndexes", [])
    ]
    missing = wanted
    for name, r in resources.items():
        if r["Type"] != "AWS::CloudWatch::Alarm" or r.get("Condition") != "IsProvisioned":
            continue
        queries = r["Properties"].get("Metrics", [])
        read = {}
        for q in queries:
            metric = (q.get("MetricStat") or {}).get("Metric") or {}
            if metric.get("Namespace") != "AWS/DynamoDB":
                continue
            dims = {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}
            if dims.get("TableName") != {"Ref": table_name}:
                continue
            read[(metric.get("MetricName"), dims.get("GlobalSecondaryIndexName"))] = q["Id"]
        if any(w not in read for w in wanted):
            missing = min(missing, [w for w in wanted if w not in read], key=len)
            continue
        expression = " ".join(q.get("Expression", "") for q in queries if q.get("ReturnData", True))
        return [
            f"{name}: {metric} of {index or 'the table'} is not FILL({read[(metric, index)]}, 0) in its expression"
            for metric, index in wanted
            if f"FILL({read[(metric, index)]}, 0)" not in expression
        ]
    listed = ", ".join(f"{m} of {i or 'the table'}" for m, i in missing)
    return [f"{table_name}: no alarm under IsProvisioned reads its throttle events; missing {listed}"]


def resource_id_of(value, table_name: str) -> str | None:
    """`table` or `index/NAME` of an auto scaling ResourceId `!Sub table/${Table}[/index/NAME]`."""
    text = value.get("Fn::Sub") if isinstance(value, dict) else None
    prefix = f"table/${{{table_name}}}"
    if not isinstance(text, str) or not text.startswith(prefix):
        return None
    return "table" if text == prefix else text[len(prefix) + 1 :]


CACHING_DISABLED = "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"
ALL_VIEWER_EXCEPT_HOST = "b689b0a8-53d0-40ab-baf2-68738e2966ac"
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


WEBHOOK_FUNCTION = "webhook-ingest"


def webhook_function(functions: dict) -> str | None:
    for name, r in functions.items():
        if r.get("Metadata", {}).get("BuildProperties", {}).get("Binary") == WEBHOOK_FUNCTION:
            return name
    return None


def check_function_urls(functions: dict) -> list:
    """webhook-ingest has a public, buffered function URL; no other function has a URL."""
    findings = []
    webhooks = webhook_function(functions)
    for name, r in functions.items():
        config = r["Properties"].get("FunctionUrlConfig")
        if name != webhooks:
            if config is not None:
                findings.append(f"{name}: a function URL; only {WEBHOOK_FUNCTION} has one")
            continue
        if config is None:
            findings.append(f"{name}: no function URL; the platforms deliver to it")
            continue
        if config.get("AuthType") != "NONE":
            findings.append(f"{name}: FunctionUrlConfig.AuthType must be NONE (the platforms sign, they do not use IAM)")
        if config.get("InvokeMode", "BUFFERED") != "BUFFERED":
            findings.append(f"{name}: FunctionUrlConfig.InvokeMode must be BUFFERED")
        if config.get("Cors"):
            findings.append(f"{name}: FunctionUrlConfig.Cors: no browser calls the webhooks")
    return findings


def url_host_of(value) -> str | None:
    """The function whose URL's host `!Select [2, !Split ["/", !GetAtt F.FunctionUrl]]` is."""
    if not isinstance(value, dict) or list(value) != ["Fn::Select"]:
        return None
    index, split = value["Fn::Select"]
    if str(index) != "2" or not isinstance(split, dict) or "Fn::Split" not in split:
        return None
    separator, source = split["Fn::Split"]
    target = source.get("Fn::GetAtt") if isinstance(source, dict) else None
    if separator != "/" or not target or target[0][-3:] != "Url" or target[1] != "FunctionUrl":
        return None
    return target[0][:-3]


def check_console_headers(name: str, resources: dict, config: dict, behaviours: dict) -> list:
    """The console's files, wherever the distribution serves them, carry the Content-Security-
    Policy `loyalty serve` gives them (cli/src/console.rs), nosniff and DENY framing."""
    source = (ROOT / "cli" / "src" / "console.rs").read_text()
    local = re.search(r'header::CONTENT_SECURITY_POLICY,\s*"([^"]+)"', source)
    if local is None:
        return ["cli/src/console.rs: no Content-Security-Policy found to compare with"]
    findings = []
    for where, behaviour in (("default", config.get("DefaultCacheBehavior", {})), ("/console/*", behaviours.get("/console/*", {}))):
        if behaviour.get("TargetOriginId") != "console":
            continue
        policy = resources.get(logical_of(behaviour.get("ResponseHeadersPolicyId")) or "", {})
        headers = policy.get("Properties", {}).get("ResponseHeadersPolicyConfig", {}).get("SecurityHeadersConfig", {})
        csp = headers.get("ContentSecurityPolicy", {}).get("ContentSecurityPolicy")
        if csp != local.group(1):
            findings.append(f"{name}: the {where} behaviour's Content-Security-Policy is {csp!r}, not loyalty serve's {local.group(1)!r}")
        if "ContentTypeOptions" not in headers or headers.get("FrameOptions", {}).get("FrameOption") != "DENY":
            findings.append(f"{name}: the {where} behaviour must send nosniff and X-Frame-Options DENY")
    return findings


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
        webhooks = webhook_function({n: r for n, r in resources.items() if r["Type"] == "AWS::Serverless::Function"})
        url_origins = {oid for oid, o in origins.items() if webhooks and url_host_of(o.get("DomainName")) == webhooks}
        behaviours = {b["PathPattern"]: b for b in config.get("CacheBehaviors", [])}
        findings.extend(check_console_headers(name, resources, config, behaviours))
        for pattern, targets, what in (
            ("/v1/*", api_origins, "the HTTP API"),
            ("/webhooks/*", url_origins, f"{WEBHOOK_FUNCTION}'s function URL"),
        ):
            behaviour = behaviours.get(pattern)
            if behaviour is None:
                findings.append(f"{name}: no {pattern} behaviour; the console's domain serves it")
                continue
            if behaviour["TargetOriginId"] not in targets:
                findings.append(f"{name}: {pattern} goes to origin {behaviour['TargetOriginId']}, not to {what}")
            if behaviour.get("CachePolicyId") != CACHING_DISABLED:
                findings.append(f"{name}: {pattern} must use the managed CachingDisabled cache policy ({CACHING_DISABLED})")
            # The distribution's Host would not be the origin's: API Gateway and a function URL
            # both refuse it (403).
            if behaviour.get("OriginRequestPolicyId") != ALL_VIEWER_EXCEPT_HOST:
                findings.append(f"{name}: {pattern} must use the managed AllViewerExceptHostHeader origin request policy ({ALL_VIEWER_EXCEPT_HOST})")
            for target in targets & {behaviour["TargetOriginId"]}:
                if origins[target].get("CustomOriginConfig", {}).get("OriginProtocolPolicy") != "https-only":
                    findings.append(f"{name}: origin {target} must be https-only")

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


METRICS_NAMESPACE = "Loyalty"
ALARM_TOPIC = "AlarmTopic"
ALARM_EMAIL = "AlarmEmail"
DASHBOARD_WIDGETS = (
    "Events per minute by outcome",
    "Errors",
    "Dead-letter queue depths",
    "Points issued vs redeemed",
    "Durations p50/p99",
    "Outbox lag",
)
PSEUDO_PARAMETERS = {"AWS::AccountId", "AWS::NotificationARNs", "AWS::NoValue", "AWS::Partition", "AWS::Region", "AWS::StackId", "AWS::StackName", "AWS::URLSuffix"}


def alarm_metrics(alarm: dict) -> list:
    """(namespace, metric name, {dimension: value}) of every metric an alarm reads, whether it
    names one metric or uses metric math."""
    p = alarm.get("Properties", {})
    dims = lambda ds: {d.get("Name"): d.get("Value") for d in ds or []}  # noqa: E731
    if "MetricName" in p:
        return [(p.get("Namespace"), p["MetricName"], dims(p.get("Dimensions")))]
    metrics = []
    for query in p.get("Metrics", []):
        metric = query.get("MetricStat", {}).get("Metric")
        if metric:
            metrics.append((metric.get("Namespace"), metric.get("MetricName"), dims(metric.get("Dimensions"))))
    return metrics


def check_observability(template: dict) -> list:
    """X-Ray, the alarm topic and its subscription, the alarms on the functions' own metrics and
    the operators' dashboard."""
    findings = []
    resources = template["Resources"]
    of_type = lambda kind: {n: r for n, r in resources.items() if r["Type"] == kind}  # noqa: E731
    functions = of_type("AWS::Serverless::Function")
    alarms = of_type("AWS::CloudWatch::Alarm")
    binary = lambda r: r.get("Metadata", {}).get("BuildProperties", {}).get("Binary")  # noqa: E731

    # Lambda records each invocation's trace; SAM grants the role the X-Ray write policy.
    default_tracing = template.get("Globals", {}).get("Function", {}).get("Tracing")
    for name, r in functions.items():
        tracing = r["Properties"].get("Tracing", default_tracing)
        if tracing != "Active":
            findings.append(f"{name}: X-Ray tracing is {tracing or 'off'}; set Globals.Function.Tracing: Active")

    # The topic every alarm notifies, and an email subscription only when an address is given.
    parameter = template.get("Parameters", {}).get(ALARM_EMAIL)
    if parameter is None:
        findings.append(f"no {ALARM_EMAIL} parameter (String, default empty)")
    elif parameter.get("Type") != "String" or parameter.get("Default") != "":
        findings.append(f"{ALARM_EMAIL}: must be a String whose default is empty")
    if resources.get(ALARM_TOPIC, {}).get("Type") != "AWS::SNS::Topic":
        findings.append(f"no SNS topic {ALARM_TOPIC} for the alarms")
    conditions = template.get("Conditions", {})
    is_set = [{"Fn::Not": [{"Fn::Equals": pair}]} for pair in ([{"Ref": ALARM_EMAIL}, ""], ["", {"Ref": ALARM_EMAIL}])]
    subscribed = False
    for name, r in of_type("AWS::SNS::Subscription").items():
        p = r.get("Properties", {})
        if p.get("TopicArn") != {"Ref": ALARM_TOPIC} or p.get("Endpoint") != {"Ref": ALARM_EMAIL}:
            continue
        subscribed = True
        if p.get("Protocol") != "email":
            findings.append(f"{name}: protocol {p.get('Protocol')!r}, not email")
        if conditions.get(r.get("Condition")) not in is_set:
            findings.append(f"{name}: must be created only when {ALARM_EMAIL} is not empty (a condition !Not [!Equals [!Ref {ALARM_EMAIL}, \"\"]])")
    for name, r in of_type("AWS::SNS::TopicSubscription").items():
        findings.append(f"{name}: use AWS::SNS::Subscription")
    if not subscribed:
        findings.append(f"no email subscription of {ALARM_EMAIL} to {ALARM_TOPIC}")
    for name, r in alarms.items():
        for actions in ("AlarmActions", "OKActions"):
            if {"Ref": ALARM_TOPIC} not in r["Properties"].get(actions, []):
                findings.append(f"{name}: {ALARM_TOPIC} is not in its {actions}")

    # The rejected-event rate of earn: 100 * rejected / all its events, over 5 minutes, 2 of 2.
    rate = alarms.get("RejectedEventRateAlarm")
    if rate is None:
        findings.append("no RejectedEventRateAlarm")
    else:
        p = rate["Properties"]
        read = alarm_metrics(rate)
        for dimensions in ({"function": "earn", "outcome": "rejected"}, {"function": "earn"}):
            if (METRICS_NAMESPACE, "Events", dimensions) not in read:
                findings.append(f"RejectedEventRateAlarm: does not read {METRICS_NAMESPACE}/Events {dimensions}")
        returned = [q for q in p.get("Metrics", []) if q.get("ReturnData", True)]
        if len(returned) != 1 or "Expression" not in returned[0]:
            findings.append("RejectedEventRateAlarm: must return one metric math expression (the rate in percent)")
        periods = {q["MetricStat"].get("Period") for q in p.get("Metrics", []) if "MetricStat" in q}
        expected = {"Threshold": 5, "ComparisonOperator": "GreaterThanThreshold", "EvaluationPeriods": 2, "DatapointsToAlarm": 2, "TreatMissingData": "notBreaching"}
        for key, value in expected.items():
            if p.get(key) != value:
                findings.append(f"RejectedEventRateAlarm: {key} is {p.get(key)!r}, not {value!r}")
        if periods != {300}:
            findings.append(f"RejectedEventRateAlarm: periods {sorted(periods, key=str)}, not 300 seconds")

    # A failed job run of every function that runs scheduled jobs.
    job_alarmed = {
        m[2].get("function")
        for r in alarms.values()
        for m in alarm_metrics(r)
        if m[:2] == (METRICS_NAMESPACE, "JobRunFailed") and set(m[2]) == {"function"}
    }
    for name, r in functions.items():
        schedules = [e for e in r["Properties"].get("Events", {}).values() if e["Type"] in ("Schedule", "ScheduleV2")]
        if schedules and binary(r) not in job_alarmed:
            findings.append(f"{name}: runs scheduled jobs, but no alarm reads {METRICS_NAMESPACE}/JobRunFailed {{function: {binary(r)}}}")

    # The dashboard: its body is JSON once the !Sub variables are filled in.
    dashboards = of_type("AWS::CloudWatch::Dashboard")
    if len(dashboards) != 1:
        findings.append(f"expected one CloudWatch dashboard, found {sorted(dashboards)}")
    for name, r in dashboards.items():
        body = r["Properties"].get("DashboardBody")
        sub = body.get("Fn::Sub") if isinstance(body, dict) else None
        text, variables = (sub[0], sub[1]) if isinstance(sub, list) else (sub, {})
        if not isinstance(text, str):
            findings.append(f"{name}: DashboardBody must be a !Sub of the JSON body (region, function and queue names filled in)")
            continue
        for variable in sorted(set(re.findall(r"\$\{([^!}][^}]*)\}", text))):
            known = variable in variables or variable in PSEUDO_PARAMETERS or variable.split(".")[0] in resources or variable in template.get("Parameters", {})
            if not known:
                findings.append(f"{name}: ${{{variable}}} names nothing of the template")
        filled = re.sub(r"\$\{!", "${", re.sub(r"\$\{([^!}][^}]*)\}", lambda m: f"SUB({m.group(1)})", text))
        try:
            dashboard = json.loads(filled)
        except json.JSONDecodeError as e:
            findings.append(f"{name}: the body is not JSON once its variables are filled in: {e}")
            continue
        widgets = {w.get("properties", {}).get("title"): w for w in dashboard.get("widgets", [])}
        for title in DASHBOARD_WIDGETS:
            if title not in widgets:
                findings.append(f"{name}: no widget {title!r}")
        for title, w in widgets.items():
            if w.get("type") == "metric" and w["properties"].get("region") != "SUB(AWS::Region)":
                findings.append(f"{name}: widget {title!r} must be in the stack's region (${{AWS::Region}})")
        named = lambda title: json.dumps(widgets.get(title, {}))  # noqa: E731
        for title in ("Errors", "Durations p50/p99"):
            if title in widgets:
                for function in functions:
                    if f'"SUB({function})"' not in named(title):
                        findings.append(f"{name}: widget {title!r} does not show {function}")
        if "Dead-letter queue depths" in widgets:
            for queue, q in of_type("AWS::SQS::Queue").items():
                target = q.get("Properties", {}).get("RedrivePolicy", {}).get("deadLetterTargetArn")
                dead_letter = logical_of(target)
                if dead_letter and f'"SUB({dead_letter}.QueueName)"' not in named("Dead-letter queue depths"):
                    findings.append(f"{name}: widget 'Dead-letter queue depths' does not show {dead_letter}")
        for metric, title in (("Events", "Events per minute by outcome"), ("OutboxLag", "Outbox lag"), ("PointsIssued", "Points issued vs redeemed"), ("PointsRedeemed", "Points issued vs redeemed")):
            if title in widgets and metric not in named(title):
                findings.append(f"{name}: widget {title!r} does not show {METRICS_NAMESPACE}/{metric}")
    return findings


UNROUTED = ("ANY", "/{proxy+}")


def check_routes_documented(functions) -> list:
    """The HTTP API routes exactly the operations of infra/openapi.yaml, each to one function
    (webhooks enter by the function URL instead), and ANY /{proxy+} the rest to member-api."""
    import yaml

    spec = yaml.safe_load((ROOT / "infra" / "openapi.yaml").read_text())
    documented = {
        (method.upper(), path)
        for path, item in spec.get("paths", {}).items()
        for method in item
        if method in ("get", "put", "post", "patch", "delete") and not path.startswith("/webhooks/")
    }
    routed = {}
    for name, r in functions.items():
        for event in r["Properties"].get("Events", {}).values():
            if event["Type"] == "HttpApi":
                route = (event["Properties"]["Method"].upper(), event["Properties"]["Path"])
                routed.setdefault(route, []).append(name)
    unrouted = routed.pop(UNROUTED, [])
    findings = []
    if unrouted != ["MemberApiFunction"]:
        findings.append(f"ANY /{{proxy+}} must go to MemberApiFunction alone (API Gateway's 404 is not a problem), not {unrouted}")
    findings += [f"openapi: {m} {p} has no route in the template" for m, p in sorted(documented - routed.keys())]
    findings += [f"{names[0]}: {m} {p} is routed but not in infra/openapi.yaml"
                 for (m, p), names in sorted(routed.items()) if (m, p) not in documented]
    findings += [f"{m} {p} is routed to {len(names)} functions: {', '.join(names)}"
                 for (m, p), names in sorted(routed.items()) if len(names) > 1]
    return findings


def is_member_route(path: str) -> bool:
    """A member's own route: the member comes from the token (`/me`)."""
    return path.endswith("/me") or "/me/" in path


def check_openapi() -> list:
    """infra/openapi.yaml parses, every operation answers with a documented status, and an
    operation documented as an admin's is on an admin route (see main)."""
    import yaml

    findings = []
    try:
        spec = yaml.safe_load((ROOT / "infra" / "openapi.yaml").read_text())
    except yaml.YAMLError as e:
        return [f"infra/openapi.yaml is not valid YAML: {e}"]
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            if method not in ("get", "put", "post", "patch", "delete", "head", "options"):
                continue  # servers, parameters, summary: not operations
            if not operation.get("responses"):
                findings.append(f"openapi: {method.upper()} {path} has no responses")
            if "(admin" in operation.get("summary", "") and is_member_route(path):
                findings.append(f"openapi: {method.upper()} {path} is documented as admin on a member route")
    return findings


if __name__ == "__main__":
    sys.exit(main())
