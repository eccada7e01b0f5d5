"""AWS clients (aiobotocore) built from the settings, and the idempotent bootstrap
of the SNS topics, the monitoring queue and its dead-letter queue."""

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

__all__ = ["SNS_TOPICS", "BootstrapResult", "bootstrap", "client", "dead_letter_queue_url"]

#: SNS topic name per record type (PROTOCOL.md section 3).
SNS_TOPICS: Final = {
    "Opportunity": "passport-opportunity",
    "External_Attachment__c": "passport-external-attachment",
    "Application_Item__c": "passport-application-item",
}


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
