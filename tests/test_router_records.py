"""Message records: which submission of a claimed id finishes the attempt, also for
records written before records named their claiming submission."""

from __future__ import annotations

import json

from broker.router import MessageRecord, _resumable

OLD = {  # as a broker wrote it before `submission` existed
    "header": "{}",
    "header_hash": "ab" * 32,
    "submitted_by": "nacka",
    "accepted": 1,
    "deadline": 2,
    "receipts": {"solna": {"delivered": 3}},
    "escalated": False,
    "routed": True,
    "granted": {},
    "answer_by": None,
    "answers": {},
    "overdue": False,
}


def test_a_record_written_before_submissions_were_named_still_reads() -> None:
    record = MessageRecord.model_validate_json(json.dumps(OLD))
    assert record.receipts == {"solna": {"delivered": 3}}
    assert record.submission is None


def test_the_claiming_stream_message_resumes_and_any_other_is_a_replay() -> None:
    record = MessageRecord.model_validate_json(json.dumps({**OLD, "submission": 7}))
    assert _resumable(record, "ab" * 32, 7, redelivered=False)  # failover: count of one
    assert not _resumable(record, "ab" * 32, 8, redelivered=True)  # published again
    assert not _resumable(record, "cd" * 32, 7, redelivered=True)  # another envelope


def test_an_old_record_keeps_the_earlier_rule() -> None:
    routed = MessageRecord.model_validate_json(json.dumps(OLD))
    unfinished = MessageRecord.model_validate_json(json.dumps({**OLD, "routed": False}))
    assert _resumable(routed, "ab" * 32, 9, redelivered=True)
    assert not _resumable(routed, "ab" * 32, 9, redelivered=False)
    assert _resumable(unfinished, "ab" * 32, 9, redelivered=False)
