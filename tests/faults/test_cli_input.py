"""``ledrec`` on bad input, as a user runs it (subprocesses, real broker): every bad row is
reported with its line and reason, ``--on-error`` decides between skipping and stopping,
and a bad command line or setting is one line on stderr, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from ledrec.settings import Settings
from tests.helpers import settings_env

CSV = """user_id,item_id,type,ts
u1,i1,view,1
,i2,view,2
u3,i3,like,3
u4,i4,view,abc
u5,i5,click,
u6,i6,view,-1
u7,i7,view,nan
 u8,i8,view,1
u9,{long},view,1
u10,i10
u11,i11,sale,11
u12,i12,view,1e20
u13,i13,view,1700000000000
"""
# line -> the reason printed for it (csv line numbers count the header as line 1)
CSV_BAD = {
    3: "invalid user_id",
    4: "unknown event type 'like'",
    5: "invalid ts",
    7: "ts must be a finite, non-negative",
    8: "ts must be a finite, non-negative",
    9: "ids must be non-empty without surrounding whitespace",
    10: "id longer than 256",
    11: "invalid type",
    13: "ts 1e+20 is more than 86400 s in the future",
    14: "ts 1700000000000 looks like milliseconds",
}
JSONL = """{"user_id": "u1", "item_id": "i1", "type": "view", "ts": 1}
{"user_id": "u2", "item_id": "i2", "type": "view"
[1, 2, 3]
{"user_id": 3, "item_id": "i3", "type": "view", "ts": 1}

{"user_id": "u4", "item_id": ["i4"], "type": "view", "ts": 1}
{"user_id": "u5", "item_id": "i5", "type": "click", "ts": 5}
"""
JSONL_BAD = {2: "invalid JSON", 3: "a JSON line must be an object", 6: "item_id"}


def _ledrec(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledrec.cli", *args], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def _published(settings: Settings) -> list[bytes]:
    """Keys of every event in the topic (partitions assigned directly: no group join wait)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "count"})
    topic = consumer.list_topics(settings.events_topic, timeout=10).topics[settings.events_topic]
    consumer.assign(
        [TopicPartition(settings.events_topic, p, OFFSET_BEGINNING) for p in topic.partitions]
    )
    keys: list[bytes] = []
    idle = 0
    while idle < 2:  # two empty polls in a row: the topic is read
        batch = consumer.consume(100, timeout=0.5)
        idle = 0 if batch else idle + 1
        keys += [m.key() or b"" for m in batch]
    consumer.close()
    return sorted(keys)


def _errors(stderr: str) -> dict[int, str]:
    lines = [line for line in stderr.splitlines() if line.startswith("line ")]
    return {int(line.split(":")[0][5:]): line for line in lines}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_publish_skips_bad_rows_and_reports_each(
    settings: Settings, tmp_path: Path, fmt: str
) -> None:
    text, bad = (CSV.format(long="x" * 300), CSV_BAD) if fmt == "csv" else (JSONL, JSONL_BAD)
    source = tmp_path / f"events.{fmt}"
    source.write_text(text)
    run = _ledrec(["publish", str(source)], settings_env(settings))
    assert run.returncode == 0, run.stderr
    errors = _errors(run.stderr)
    assert sorted(errors) == sorted(bad), run.stderr
    for line, reason in bad.items():
        assert reason in errors[line], errors[line]
    # A blank ts means "now"; an integer id is taken as its decimal string.
    good = [b"u1", b"u11", b"u5"] if fmt == "csv" else [b"3", b"u1", b"u5"]
    assert f"published {len(good)} events" in run.stdout and f"{len(bad)} bad rows" in run.stdout
    assert _published(settings) == good
    assert "Traceback" not in run.stderr


def test_publish_stops_at_the_first_bad_row_when_asked(settings: Settings, tmp_path: Path) -> None:
    source = tmp_path / "events.csv"
    source.write_text(
        "user_id,item_id,type,ts\nu1,i1,view,1\nu2,i2,view,2\nu3,i3,like,3\nu4,i4,view,4\n"
    )
    run = _ledrec(["publish", str(source), "--on-error", "stop"], settings_env(settings))
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        "line 4: unknown event type 'like'",
        "ledrec publish: CliError: stopped at line 4 (2 published)",
    ]
    assert _published(settings) == [b"u1", b"u2"]  # what came before the bad row is kept


@pytest.mark.parametrize(
    ("args", "extra_env", "message"),
    [
        (["publish", "--on-error", "maybe"], {}, "invalid choice: 'maybe'"),
        (["recommend", "-k", "ten"], {}, "invalid int value: 'ten'"),
        (["fly"], {}, "invalid choice: 'fly'"),
        ([], {}, "required: command"),
        (["publish", "/no/such/file.csv"], {}, "No such file or directory"),
        (["recommend"], {}, "give a user id or --items"),
        (["recommend", "u1"], {"LEDREC_MAX_K": "lots"}, "LEDREC_MAX_K"),
        (["consume"], {"LEDREC_EVENT_WEIGHTS": '{"view": -1}'}, "LEDREC_EVENT_WEIGHTS"),
        (["models", "activate", "v-nope"], {}, "unknown model version"),
    ],
)
def test_bad_command_lines_get_one_line(
    settings: Settings, args: list[str], extra_env: dict[str, str], message: str
) -> None:
    run = _ledrec(args, {**settings_env(settings), **extra_env})
    assert run.returncode in (1, 2)
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr
