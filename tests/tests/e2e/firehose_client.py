"""A Firehose producer written with boto3, as a team moving off Kinesis Firehose would have it.

Driven by tests/tests/e2e/firehose.rs:

    python firehose_client.py ENDPOINT KEY_ID SECRET STREAM LINES_FILE

Sends the toll lines of LINES_FILE (the first with PutRecord, the rest with PutRecordBatch,
500 records a request, the first record of each request carrying three lines), resends the
first batch as a producer does after a lost answer, then checks the refusals: a record with a
line over the collector's ingest.max_line_bytes (partial failure), a record over 1,000 KiB
(the request refused whole, as AWS does), a wrong secret, an unknown key and an unknown
stream. Prints a JSON report on stdout; exits non-zero with a message on the first check that
fails.
"""

import json
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError


def check(condition, what):
    if not condition:
        sys.exit(f"firehose_client.py: check failed: {what}")


def client(endpoint, key_id, secret):
    # The region is whatever the producer has configured; the collector accepts any unless
    # firehose.region is set. No retries: every answer is checked as it comes.
    return boto3.client(
        "firehose",
        endpoint_url=endpoint,
        region_name="sa-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


def refused(call, code, status=400):
    try:
        call()
    except ClientError as error:
        got = error.response["Error"]["Code"]
        got_status = error.response["ResponseMetadata"]["HTTPStatusCode"]
        check(got == code and got_status == status, f"expected {code}/{status}, got {got}/{got_status}: {error}")
        return error.response["Error"]["Message"]
    check(False, f"expected {code}, the call succeeded")


def main():
    endpoint, key_id, secret, stream, lines_file = sys.argv[1:6]
    with open(lines_file, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    firehose = client(endpoint, key_id, secret)
    report = {}

    names = firehose.list_delivery_streams()["DeliveryStreamNames"]
    check(stream in names, f"{stream} in ListDeliveryStreams: {names}")
    description = firehose.describe_delivery_stream(DeliveryStreamName=stream)["DeliveryStreamDescription"]
    check(description["DeliveryStreamStatus"] == "ACTIVE", f"ACTIVE: {description}")

    # One record, without its final newline: the collector treats it as one line all the same.
    answer = firehose.put_record(DeliveryStreamName=stream, Record={"Data": lines[0].rstrip(b"\n")})
    check(answer["RecordId"] and answer["Encrypted"] is False, f"PutRecord answer: {answer}")

    rest = lines[1:]
    batches = []
    i = 0
    while i < len(rest):
        records = []
        while i < len(rest) and len(records) < 500:
            take = 3 if not records and i + 3 <= len(rest) else 1
            records.append({"Data": b"".join(rest[i : i + take])})
            i += take
        answer = firehose.put_record_batch(DeliveryStreamName=stream, Records=records)
        entries = answer["RequestResponses"]
        check(answer["FailedPutCount"] == 0, f"no failure: {answer['FailedPutCount']}")
        check(len(entries) == len(records), "one entry per record")
        check(all("RecordId" in e and "ErrorCode" not in e for e in entries), "every record has an id")
        batches.append(records)
    report["batches"] = len(batches)

    # The answer to the first batch was "lost": the producer sends it again. Firehose has no
    # batch identity, so these lines reach the WAL twice; the natural key drops them.
    answer = firehose.put_record_batch(DeliveryStreamName=stream, Records=batches[0])
    check(answer["FailedPutCount"] == 0, "resent batch accepted")
    resent = sum(r["Data"].count(b"\n") for r in batches[0])

    # One record with a line longer than the collector's ingest.max_line_bytes: that record
    # fails alone, the two around it (lines sent before: duplicates again) are taken.
    too_long = b"x" * 8192 + b"\n"
    answer = firehose.put_record_batch(
        DeliveryStreamName=stream,
        Records=[{"Data": lines[0]}, {"Data": too_long}, {"Data": lines[1]}],
    )
    entries = answer["RequestResponses"]
    check(answer["FailedPutCount"] == 1, f"FailedPutCount 1: {answer}")
    check("RecordId" in entries[0] and "RecordId" in entries[2], f"neighbours accepted: {entries}")
    check(entries[1].get("ErrorCode") == "InvalidArgumentException", f"ErrorCode: {entries[1]}")
    check("RecordId" not in entries[1], "no RecordId for the failed record")
    check("max_line_bytes" in entries[1].get("ErrorMessage", ""), f"ErrorMessage: {entries[1]}")
    report["partial_failure_message"] = entries[1]["ErrorMessage"]
    resent += 2

    # A record over Firehose's 1,000 KiB: AWS refuses the whole request, and so does the
    # collector; the small record next to it is not kept either.
    message = refused(
        lambda: firehose.put_record_batch(
            DeliveryStreamName=stream,
            Records=[{"Data": b"y" * 1_024_001}, {"Data": b"never,stored\n"}],
        ),
        "ValidationException",
    )
    check("records.1.member.data" in message, message)

    wrong = client(endpoint, key_id, secret + "x")
    report["wrong_secret"] = refused(
        lambda: wrong.put_record(DeliveryStreamName=stream, Record={"Data": b"never,stored\n"}),
        "InvalidSignatureException",
    )
    stranger = client(endpoint, "AKIDNOBODYKNOWS", secret)
    refused(
        lambda: stranger.put_record(DeliveryStreamName=stream, Record={"Data": b"never,stored\n"}),
        "UnrecognizedClientException",
    )
    refused(
        lambda: firehose.put_record(DeliveryStreamName="no-such-stream", Record={"Data": b"never,stored\n"}),
        "ResourceNotFoundException",
    )
    report["resent_lines"] = resent
    print(json.dumps(report))


if __name__ == "__main__":
    main()
