"""AWS clients (aiobotocore) built from the settings, the idempotent bootstrap of the SNS
topics, the monitoring queue and its dead-letter queue, and the tables of SQS calls that the
IAM policies of deploy/cloudformation.yaml grant."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from .config import Settings
from .errors import AwsError

__all__ = [
    "DLQ_OPERATOR_SQS_CALLS",
    "SERVICE_SQS_CALLS",
    "SNS_TOPICS",
    "BootstrapResult",
    "bootstrap",
    "client",
    "dead_letter_queue_url",
    "iam_action",
]

#: SNS topic name per record type (PROTOCOL.md section 3).
SNS_TOPICS: Final = {
    "Opportunity": "passport-opportunity",
    "External_Attachment__c": "passport-external-attachment",
    "Application_Item__c": "passport-application-item",
}

#: The SQS calls the running service (``run``, ``worker``) makes, by the queue it makes them
#: on: ``queue`` is a consumed monitoring queue, ``dead_letter_queue`` its DLQ (found through
#: the redrive policy; rejected input goes there). The service makes no SNS call. The IAM
#: policy in deploy/cloudformation.yaml grants exactly these (see :func:`iam_action`);
#: tests/unit/test_service_aws_calls.py checks this table against the code and
#: tests/integration/test_cloudformation.py the template against this table.
SERVICE_SQS_CALLS: Final = {
    "queue": frozenset(
        {
            "receive_message",
            "delete_message_batch",
            "change_message_visibility_batch",
            "get_queue_attributes",
        }
    ),
    # get_queue_attributes: the depth gauge (amt_ingest.watch).
    "dead_letter_queue": frozenset({"get_queue_attributes", "get_queue_url", "send_message"}),
}

#: What the operator policy of deploy/cloudformation.yaml allows for dead-letter work over SQS:
#: on a DLQ, look (receive, then release with a visibility change), purge and delete what was
#: replayed; on the monitoring queue, find its DLQ and send a replayed message back. A batch
#: form needs no entry of its own (same IAM action). Commands that work on the DLQs must stay
#: within this table (change the template with it).
DLQ_OPERATOR_SQS_CALLS: Final = {
    "queue": frozenset({"get_queue_attributes", "send_message"}),
    "dead_letter_queue": frozenset(
        {
            "receive_message",
            "change_message_visibility_batch",
            "delete_message_batch",
            "get_queue_attributes",
            "get_queue_url",
        }
    ),
}


def iam_action(service: str, method: str) -> str:
    """The IAM action that authorizes a botocore client method.

    ``iam_action("sqs", "delete_message_batch")`` is ``"sqs:DeleteMessage"``: SQS and SNS
    authorize a batch call with the action of its single-message form.
    """
    name = "".join(part.capitalize() for part in method.split("_"))
    return f"{service}:{name.removesuffix('Batch')}"


@asynccontextmanager
async def client(settings: Settings, service: str) -> AsyncIterator[Any]:
    """An aiobotocore client for ``service`` on the configured endpoint and region."""
    kwargs: dict[str, Any] = {
        "region_name": settings.aws_region,
        "config": AioConfig(
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=20,
        ),
    }
    if settings.aws_endpoint_url:
        kwargs["endpoint_url"] = settings.aws_endpoint_url
    if settings.aws_access_key_id and settings.aws_secret_access_key:
        kwargs["aws_access_key_id"] = settings.aws_access_key_id.get_secret_value()
        kwargs["aws_secret_access_key"] = settings.aws_secret_access_key.get_secret_value()
    async with get_session().create_client(service, **kwargs) as c:
        yield c


async def dead_letter_queue_url(sqs: Any, queue_url: str) -> str | None:
    """The queue's dead-letter queue, from its redrive policy; ``None`` if it has none."""
    try:
        attrs = await sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
        policy = attrs.get("Attributes", {}).get("RedrivePolicy")
        if not policy:
            return None
        arn = json.loads(policy)["deadLetterTargetArn"]
        _, _, _, _, account, name = arn.split(":", 5)
        reply = await sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)
        return str(reply["QueueUrl"])
    except (ClientError, BotoCoreError, KeyError, ValueError) as exc:
        raise AwsError(f"finding the dead-letter queue of {queue_url}: {exc}") from exc


@dataclass(frozen=True)
class BootstrapResult:
    topic_arns: dict[str, str]
    queue_url: str
    dlq_url: str


async def bootstrap(
    settings: Settings,
    *,
    queue_name: str = "amt-ingest-monitor",
    max_receive_count: int = 5,
    raw_delivery: bool = False,
    visibility_timeout: int = 60,
) -> BootstrapResult:
    """Create (or find) the three topics, the queue, its DLQ and redrive, and the subscriptions.

    Safe to run again: every call is idempotent on SNS and SQS.
    """
    try:
        async with client(settings, "sns") as sns, client(settings, "sqs") as sqs:
            arns = {}
            for topic, name in SNS_TOPICS.items():
                arns[topic] = (await sns.create_topic(Name=name))["TopicArn"]
            dlq_url = (
                await sqs.create_queue(
                    QueueName=f"{queue_name}-dlq", Attributes={"MessageRetentionPeriod": "1209600"}
                )
            )["QueueUrl"]
            dlq_arn = (
                await sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
            )["Attributes"]["QueueArn"]
            queue_url = (await sqs.create_queue(QueueName=queue_name))["QueueUrl"]
            queue_arn = (
                await sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
            )["Attributes"]["QueueArn"]
            policy = {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "sns.amazonaws.com"},
                        "Action": "sqs:SendMessage",
                        "Resource": queue_arn,
                        "Condition": {"ArnEquals": {"aws:SourceArn": list(arns.values())}},
                    }
                ],
            }
            await sqs.set_queue_attributes(
                QueueUrl=queue_url,
                Attributes={
                    "RedrivePolicy": json.dumps(
                        {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}
                    ),
                    "VisibilityTimeout": str(visibility_timeout),
                    "Policy": json.dumps(policy),
                },
            )
            existing = set()
            for arn in arns.values():
                subs = await sns.list_subscriptions_by_topic(TopicArn=arn)
                existing |= {(arn, s["Endpoint"]) for s in subs.get("Subscriptions", [])}
            for arn in arns.values():
                if (arn, queue_arn) in existing:
                    continue
                await sns.subscribe(
                    TopicArn=arn,
                    Protocol="sqs",
                    Endpoint=queue_arn,
                    Attributes={"RawMessageDelivery": "true" if raw_delivery else "false"},
                    ReturnSubscriptionArn=True,
                )
    except (ClientError, BotoCoreError, OSError) as exc:
        raise AwsError(f"bootstrap failed: {exc}") from exc
    return BootstrapResult(topic_arns=arns, queue_url=queue_url, dlq_url=dlq_url)
