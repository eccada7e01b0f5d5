"""deploy/cloudformation.yaml deployed to the moto server: the resources, the IAM policies and
messages flowing from every topic to the queue, compared with what `bootstrap` creates.

moto's CloudFormation skips the two resource types it does not implement
(``AWS::SQS::QueuePolicy`` and ``AWS::SNS::Subscription``) and still reports
CREATE_COMPLETE. :func:`deploy` creates exactly those resources through the SQS and SNS
APIs from the template's own properties, resolved against the stack moto built, and
fails on any other type moto skips: the subscriptions tested here are the template's.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import botocore.session
import pytest
import yaml

from amt_ingest import aws
from amt_ingest.config import load_settings
from amt_ingest.routing.events import Event, parse_sqs_message
from tests.conftest import SAMPLES

TEMPLATE = Path(__file__).parents[2] / "deploy" / "cloudformation.yaml"
ORG = "00D5g000004ZzABEA0"
FOREIGN_ORG = "00D5g000001FoRGEA0"
#: What moto's CloudFormation skips; deploy() creates these itself.
APPLIED_BY_THE_TEST = ("AWS::SQS::QueuePolicy", "AWS::SNS::Subscription")


# -- the template ---------------------------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms (``!Ref x`` is ``{"Ref": "x"}``)."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def load_template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)


_NO_VALUE = object()


class _Resolver:
    """Resolves Ref, Fn::GetAtt (queue Arn), Fn::If and conditions against a built stack."""

    def __init__(
        self,
        template: dict[str, Any],
        parameters: dict[str, str],
        physical_ids: dict[str, str],
        sqs: Any,
    ):
        self.template = template
        self.parameters = {
            name: str(parameters.get(name, spec.get("Default", "")))
            for name, spec in template.get("Parameters", {}).items()
        }
        self.physical_ids = physical_ids
        self.sqs = sqs

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            items = [self.resolve(v) for v in value]
            return [v for v in items if v is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                return self.get_att(*arg)
            if key == "Fn::If":
                condition, yes, no = arg
                return self.resolve(yes if self.condition(condition) else no)
            assert not key.startswith("Fn::"), f"{key} is not resolved by this test"
        resolved = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not _NO_VALUE}

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in self.parameters:
            return self.parameters[name]
        return self.physical_ids[name]

    def get_att(self, name: str, attribute: str) -> str:
        resource_type = self.template["Resources"][name]["Type"]
        assert (resource_type, attribute) == ("AWS::SQS::Queue", "Arn"), (name, attribute)
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.physical_ids[name], AttributeNames=["QueueArn"]
        )
        return str(attrs["Attributes"]["QueueArn"])

    def condition(self, name: str) -> bool:
        return bool(self._evaluate(self.template["Conditions"][name]))

    def _evaluate(self, expression: Any) -> Any:
        if isinstance(expression, dict):
            ((key, arg),) = expression.items()
            if key == "Fn::Not":
                return not self._evaluate(arg[0])
            if key == "Fn::Equals":
                return self._evaluate(arg[0]) == self._evaluate(arg[1])
            if key == "Condition":
                return self.condition(arg)
            return self.resolve(expression)
        return expression


# -- moto ---------------------------------------------------------------------------------


def client(endpoint: str, service: str) -> Any:
    return botocore.session.get_session().create_client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def reset(endpoint: str) -> None:
    req = urllib.request.Request(endpoint + "/moto-api/reset", method="POST")
    urllib.request.urlopen(req, timeout=10).close()


def deploy(
    endpoint: str, parameters: dict[str, str] | None = None, *, stack: str = "amt"
) -> dict[str, str]:
    """Create the stack, wait for CREATE_COMPLETE, create what moto skips; the stack's outputs."""
    parameters = parameters or {}
    template = load_template()
    cfn, sqs, sns = (client(endpoint, s) for s in ("cloudformation", "sqs", "sns"))
    cfn.create_stack(
        StackName=stack,
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )
    deadline = time.monotonic() + 60
    while True:
        description = cfn.describe_stacks(StackName=stack)["Stacks"][0]
        if not description["StackStatus"].endswith("_IN_PROGRESS"):
            break
        assert time.monotonic() < deadline, description["StackStatus"]
        time.sleep(0.2)
    assert description["StackStatus"] == "CREATE_COMPLETE", description.get("StackStatusReason")

    built = {
        r["LogicalResourceId"]: r
        for r in cfn.list_stack_resources(StackName=stack)["StackResourceSummaries"]
        if r["LogicalResourceId"]
    }
    assert all(r["ResourceStatus"] == "CREATE_COMPLETE" for r in built.values())
    resolver = _Resolver(
        template, parameters, {k: r["PhysicalResourceId"] for k, r in built.items()}, sqs
    )
    skipped = {
        name: spec
        for name, spec in template["Resources"].items()
        if name not in built and ("Condition" not in spec or resolver.condition(spec["Condition"]))
    }
    assert {spec["Type"] for spec in skipped.values()} <= set(APPLIED_BY_THE_TEST), skipped
    for resource_type in APPLIED_BY_THE_TEST:  # queue policies first, as DependsOn says
        for spec in skipped.values():
            if spec["Type"] == resource_type:
                _apply(resource_type, resolver.resolve(spec["Properties"]), sqs, sns)
    return {o["OutputKey"]: o["OutputValue"] for o in description.get("Outputs", [])}


def _apply(resource_type: str, props: dict[str, Any], sqs: Any, sns: Any) -> None:
    if resource_type == "AWS::SQS::QueuePolicy":
        for url in props["Queues"]:
            sqs.set_queue_attributes(
                QueueUrl=url, Attributes={"Policy": json.dumps(props["PolicyDocument"])}
            )
        return
    attributes = {}
    for name in ("RawMessageDelivery", "FilterPolicy", "FilterPolicyScope", "RedrivePolicy"):
        if name in props:
            value = props[name]
            attributes[name] = value if isinstance(value, str) else json.dumps(value)
    sns.subscribe(
        TopicArn=props["TopicArn"],
        Protocol=props["Protocol"],
        Endpoint=props["Endpoint"],
        Attributes=attributes,
        ReturnSubscriptionArn=True,
    )


def _name(arn_or_url: str) -> str:
    return arn_or_url.replace("/", ":").rsplit(":", 1)[1]


def describe(endpoint: str) -> dict[str, Any]:
    """Topics, queues and subscriptions on the endpoint, by name, in comparable form."""
    sqs, sns = client(endpoint, "sqs"), client(endpoint, "sns")
    topic_arns = sorted(t["TopicArn"] for t in sns.list_topics()["Topics"])
    queues = {}
    for url in sqs.list_queues().get("QueueUrls", []):
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        redrive = json.loads(attrs["RedrivePolicy"]) if "RedrivePolicy" in attrs else None
        policy = json.loads(attrs["Policy"]) if "Policy" in attrs else None
        for statement in (policy or {}).get("Statement", []):
            for test in statement.get("Condition", {}).values():
                for key, value in test.items():
                    test[key] = sorted(value) if isinstance(value, list) else [value]
        queues[_name(url)] = {
            "VisibilityTimeout": int(attrs["VisibilityTimeout"]),
            "MessageRetentionPeriod": int(attrs["MessageRetentionPeriod"]),
            "RedrivePolicy": redrive
            and {
                "deadLetterTarget": _name(redrive["deadLetterTargetArn"]),
                "maxReceiveCount": int(redrive["maxReceiveCount"]),
            },
            "Policy": policy,
        }
    subscriptions = []
    for arn in topic_arns:
        for sub in sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]:
            attrs = sns.get_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"])
            attrs = attrs["Attributes"]
            filter_policy = attrs.get("FilterPolicy")
            subscriptions.append(
                (
                    _name(arn),
                    sub["Protocol"],
                    _name(sub["Endpoint"]),
                    attrs.get("RawMessageDelivery", "false"),
                    json.loads(filter_policy) if filter_policy else None,
                )
            )
    return {
        "topics": [_name(a) for a in topic_arns],
        "queues": queues,
        "subscriptions": sorted(subscriptions, key=repr),
    }


def policy_grants(endpoint: str, policy_arn: str) -> dict[str, set[str]]:
    """The actions the managed policy allows, by resource; fails on anything but plain Allows."""
    iam = client(endpoint, "iam")
    version = iam.get_policy(PolicyArn=policy_arn)["Policy"]["DefaultVersionId"]
    document = iam.get_policy_version(PolicyArn=policy_arn, VersionId=version)
    grants: dict[str, set[str]] = {}
    for statement in document["PolicyVersion"]["Document"]["Statement"]:
        assert statement["Effect"] == "Allow"
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource"}, statement
        actions = statement["Action"]
        resources = statement["Resource"]
        for resource in [resources] if isinstance(resources, str) else resources:
            assert "*" not in resource, resource
            grants.setdefault(resource, set()).update(
                [actions] if isinstance(actions, str) else actions
            )
    return grants


def sample(name: str) -> dict[str, Any]:
    return json.loads((SAMPLES / name).read_text())


def publish(sns: Any, topic_arn: str, event: dict[str, Any]) -> None:
    """As Passport publishes (PROTOCOL.md 3): the event JSON with event_type and org_id."""
    sns.publish(
        TopicArn=topic_arn,
        Message=json.dumps(event),
        MessageAttributes={
            "event_type": {"DataType": "String", "StringValue": event["topic"]},
            "org_id": {"DataType": "String", "StringValue": event["org_id"]},
        },
    )


def receive_all(sqs: Any, queue_url: str, expected: int) -> list[dict[str, Any]]:
    """Receive until ``expected`` messages came (or 10 s passed), then once more for extras."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while len(messages) < expected and time.monotonic() < deadline:
        messages += _receive(sqs, queue_url, wait=1)
    return messages + _receive(sqs, queue_url, wait=1)


def _receive(sqs: Any, queue_url: str, *, wait: int) -> list[dict[str, Any]]:
    reply = sqs.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=wait,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["All"],
    )
    messages = reply.get("Messages", [])
    for message in messages:
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return list(messages)


# -- tests --------------------------------------------------------------------------------


async def test_the_stack_creates_what_bootstrap_creates(aws_env: str) -> None:
    await aws.bootstrap(load_settings())
    bootstrapped = describe(aws_env)
    reset(aws_env)
    deploy(aws_env)
    deployed = describe(aws_env)

    assert deployed == bootstrapped
    # and what both create is what PROTOCOL.md 3 asks for
    assert deployed["topics"] == sorted(aws.SNS_TOPICS.values())
    assert set(deployed["queues"]) == {"amt-ingest-monitor", "amt-ingest-monitor-dlq"}
    assert deployed["queues"]["amt-ingest-monitor"]["RedrivePolicy"] == {
        "deadLetterTarget": "amt-ingest-monitor-dlq",
        "maxReceiveCount": 5,
    }
    assert deployed["queues"]["amt-ingest-monitor-dlq"]["MessageRetentionPeriod"] == 1209600
    assert deployed["subscriptions"] == sorted(
        ((topic, "sqs", "amt-ingest-monitor", "false", None) for topic in aws.SNS_TOPICS.values()),
        key=repr,
    )


def test_outputs_name_every_resource(aws_env: str) -> None:
    outputs = deploy(aws_env, {"QueueName": "mirror-q", "MaxReceiveCount": "3"})
    sqs = client(aws_env, "sqs")

    assert _name(outputs["MonitorQueueUrl"]) == "mirror-q"
    assert _name(outputs["DeadLetterQueueUrl"]) == "mirror-q-dlq"
    for key in ("MonitorQueue", "DeadLetterQueue"):
        attrs = sqs.get_queue_attributes(QueueUrl=outputs[f"{key}Url"], AttributeNames=["All"])
        assert attrs["Attributes"]["QueueArn"] == outputs[f"{key}Arn"]
    redrive = json.loads(
        sqs.get_queue_attributes(
            QueueUrl=outputs["MonitorQueueUrl"], AttributeNames=["RedrivePolicy"]
        )["Attributes"]["RedrivePolicy"]
    )
    assert redrive["deadLetterTargetArn"] == outputs["DeadLetterQueueArn"]
    assert int(redrive["maxReceiveCount"]) == 3
    topics = {t["TopicArn"] for t in client(aws_env, "sns").list_topics()["Topics"]}
    assert topics == {
        outputs["OpportunityTopicArn"],
        outputs["ExternalAttachmentTopicArn"],
        outputs["ApplicationItemTopicArn"],
    }
    assert outputs["ServicePolicyArn"].endswith(":policy/amt-service")
    assert outputs["OperatorPolicyArn"].endswith(":policy/amt-dlq-operator")


def test_a_message_published_to_each_topic_arrives_on_the_queue(aws_env: str) -> None:
    outputs = deploy(aws_env)
    sns, sqs = client(aws_env, "sns"), client(aws_env, "sqs")
    topic_arns = {
        "Opportunity": outputs["OpportunityTopicArn"],
        "External_Attachment__c": outputs["ExternalAttachmentTopicArn"],
        "Application_Item__c": outputs["ApplicationItemTopicArn"],
    }
    events = [
        sample("event-opportunity-create.json"),
        sample("event-attachment-create.json"),
        sample("event-items-multi-update.json"),
    ]
    assert {e["topic"] for e in events} == set(topic_arns)
    for event in events:
        publish(sns, topic_arns[event["topic"]], event)

    messages = receive_all(sqs, outputs["MonitorQueueUrl"], len(events))

    assert len(messages) == len(events)
    arrived = {}
    for message in messages:
        envelope = json.loads(message["Body"])  # no raw delivery: the SNS envelope
        assert envelope["Type"] == "Notification"
        parsed = parse_sqs_message(message["Body"], message.get("MessageAttributes"))
        assert isinstance(parsed, Event), parsed
        arrived[parsed.event_id] = envelope["TopicArn"]
    assert arrived == {e["event_id"]: topic_arns[e["topic"]] for e in events}


def test_filter_policy_and_raw_delivery_parameters(aws_env: str) -> None:
    outputs = deploy(
        aws_env,
        {"FilterPolicy": json.dumps({"org_id": [ORG]}), "RawMessageDelivery": "true"},
    )
    sns, sqs = client(aws_env, "sns"), client(aws_env, "sqs")
    subscriptions = describe(aws_env)["subscriptions"]
    assert subscriptions == sorted(
        (
            (t, "sqs", "amt-ingest-monitor", "true", {"org_id": [ORG]})
            for t in aws.SNS_TOPICS.values()
        ),
        key=repr,
    )
    ours = sample("event-opportunity-update.json")
    foreign = {**ours, "event_id": str(uuid.uuid4()), "org_id": FOREIGN_ORG}
    publish(sns, outputs["OpportunityTopicArn"], foreign)
    publish(sns, outputs["OpportunityTopicArn"], ours)

    messages = receive_all(sqs, outputs["MonitorQueueUrl"], 1)

    assert len(messages) == 1
    (message,) = messages
    assert json.loads(message["Body"]) == ours  # raw delivery: the event itself
    assert message["MessageAttributes"]["org_id"]["StringValue"] == ORG
    parsed = parse_sqs_message(message["Body"], message["MessageAttributes"])
    assert isinstance(parsed, Event) and parsed.event_id == ours["event_id"]


def test_service_policy_grants_exactly_the_service_calls(aws_env: str) -> None:
    outputs = deploy(aws_env)

    grants = policy_grants(aws_env, outputs["ServicePolicyArn"])

    assert grants == {
        outputs["MonitorQueueArn"]: {
            aws.iam_action("sqs", m) for m in aws.SERVICE_SQS_CALLS["queue"]
        },
        outputs["DeadLetterQueueArn"]: {
            aws.iam_action("sqs", m) for m in aws.SERVICE_SQS_CALLS["dead_letter_queue"]
        },
    }


def test_operator_policy_grants_exactly_the_dead_letter_work(aws_env: str) -> None:
    outputs = deploy(aws_env)

    grants = policy_grants(aws_env, outputs["OperatorPolicyArn"])

    assert grants == {
        outputs["MonitorQueueArn"]: {
            aws.iam_action("sqs", m) for m in aws.DLQ_OPERATOR_SQS_CALLS["queue"]
        },
        outputs["DeadLetterQueueArn"]: {
            aws.iam_action("sqs", m) for m in aws.DLQ_OPERATOR_SQS_CALLS["dead_letter_queue"]
        },
    }
    assert "sqs:PurgeQueue" not in grants[outputs["MonitorQueueArn"]]


def test_policies_attach_to_the_named_roles(aws_env: str) -> None:
    iam = client(aws_env, "iam")
    trust = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
    )
    for role in ("amt-service-role", "amt-operator-role"):
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=trust)

    outputs = deploy(
        aws_env, {"ServiceRoleName": "amt-service-role", "OperatorRoleName": "amt-operator-role"}
    )

    def attached(role: str) -> list[str]:
        return [
            p["PolicyArn"]
            for p in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]
        ]

    assert attached("amt-service-role") == [outputs["ServicePolicyArn"]]
    assert attached("amt-operator-role") == [outputs["OperatorPolicyArn"]]


@pytest.mark.parametrize(
    ("method", "action"),
    [
        ("receive_message", "sqs:ReceiveMessage"),
        ("delete_message_batch", "sqs:DeleteMessage"),
        ("change_message_visibility_batch", "sqs:ChangeMessageVisibility"),
        ("send_message_batch", "sqs:SendMessage"),
        ("get_queue_url", "sqs:GetQueueUrl"),
    ],
)
def test_iam_action_of_a_client_method(method: str, action: str) -> None:
    assert aws.iam_action("sqs", method) == action
