"""Least-privilege Redis ACL users, one per role: what each component needs and nothing else.

``acl_rules(role, prefix, queue)`` gives the ``ACL SETUSER`` rules (after ``<user> on
>password``); docs/security.md shows them for the default names, and tests/faults/
test_access.py runs every component as its user against a real server. Redis 7 checks the
commands a Lua script calls against the caller's ACL too, so a script's commands are listed.
Selectors (``(...)``) grant a command only on its own keys.
"""

from __future__ import annotations

from ledrec.keyspace import Keyspace

ROLES = ("consumer", "scorer", "client", "operator")

# redis-py's health-check PING. (The CLIENT SETINFO it sends on connect may be refused: it
# ignores the error, and Redis < 7.2 does not know the command.)
_CONNECT = ["+ping"]
# A cluster client reads the slot map and the command table, and follows ASK redirections
# during a resharding.
_CLUSTER = [
    "+cluster|slots", "+cluster|shards", "+cluster|nodes", "+cluster|info", "+asking",
    "+command",  # redis-py's cluster client reads the command table (key positions)
]  # fmt: skip


def acl_rules(
    role: str,
    prefix: str = "ledrec",
    queue: str | None = None,
    *,
    cluster: bool = False,
    queues: int = 0,
) -> list[str]:
    """``ACL SETUSER`` rules for ``role`` in a deployment with this key prefix and queue, on
    one Redis or (``cluster``) on a Redis Cluster, where they are set on every node (ACLs
    are per node) and name the hash-tagged keys (``ledrec.keyspace``)."""
    keys = Keyspace(prefix, "" if cluster else (queue or ""), cluster, queues)
    models = keys.all_models
    on_queues = [f"~{q}" for q in keys.request_queues]
    base = ["resetkeys", "resetchannels", "-@all", *_CONNECT, *(_CLUSTER if cluster else [])]
    if role == "consumer":  # user states (read + compare-and-set script), its status, models,
        # the topic's incarnations, durable commits (a marker write, then WAIT)
        return [
            *base,
            "+hmget", "+evalsha", "+script|load", "+hget", "+hset", "+hdel", "+expire", "+wait",
            f"~{keys.users}",
            f"(+set ~{keys.replication_marker}*)",
            f"(+set ~{keys.consumers})",
            f"(+hget +hset +hsetnx +hincrby +hgetall ~{keys.topics})",
            f"(+get +hget +smembers %R~{models})",
        ]  # fmt: skip
    if role == "scorer":  # take requests, read states and models, reply, heartbeat, follow
        # swaps, measure the queues' depth (LLEN)
        return [  # the take script (stream/intake.py) pops the queue and its taking list, HMGETs
            *base,
            "+blmove", "+rpop", "+rpush", "+llen", "+evalsha", "+script|load", "+time",
            *on_queues, f"~{keys.takings}",
            f"(+hmget %R~{keys.users})",
            f"(+lpush +expire ~{keys.replies})",
            f"(+get +hget +smembers %R~{models})",
            f"(+set ~{keys.scorers})",
            f"(+subscribe +unsubscribe &{keys.model_events})",
        ]  # fmt: skip
    if role == "client":  # the bounded push (a script: LLEN + LPUSH) and its own reply key
        return [
            *base,
            "+evalsha", "+script|load", "+llen", "+lpush", "+time", *on_queues,
            f"(+blpop ~{keys.replies})",
        ]  # fmt: skip
    if role == "operator":  # train/register/activate/back-fill/retire, status: data commands only
        return [
            *base,
            "+@read", "+@write", "+@scripting", "+@transaction", "+@pubsub", "+scan",
            "-@dangerous", "-script|flush", "-script|kill", "-function",
            f"~{keys.everything}", f"&{keys.model_events}",
        ]  # fmt: skip
    raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")


def acl_command(
    role: str, prefix: str = "ledrec", queue: str | None = None, *, cluster: bool = False
) -> str:
    """The ``ACL SETUSER`` line for ``role`` as an operator types it (redis-cli quoting)."""
    rules = acl_rules(role, prefix, queue, cluster=cluster)
    rules_text = " ".join(f'"{r}"' if r.startswith("(") else r for r in rules)
    return f"ACL SETUSER ledrec-{role} on >PASSWORD {rules_text}"
