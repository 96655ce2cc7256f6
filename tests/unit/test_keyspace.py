"""One keyspace: every key under the deployment's prefix, the queue following the prefix,
and the ACL rules built from the same patterns."""

from __future__ import annotations

import fnmatch

from ledrec.deploy.acl import acl_rules
from ledrec.keyspace import Keyspace
from ledrec.settings import Settings


def test_the_request_queue_follows_the_key_prefix() -> None:
    a, b = Settings(key_prefix="shop-a"), Settings(key_prefix="shop-b")
    assert a.request_queue == "shop-a:rpc:requests" != b.request_queue
    assert Settings(key_prefix="x", request_queue="q").keyspace.requests == "q"


def test_every_key_is_under_the_prefix_and_matches_its_pattern() -> None:
    keys = Keyspace("p")
    pairs = [
        (keys.user("alice"), keys.users),
        (keys.reply("r1"), keys.replies),
        (keys.taking("s1"), keys.takings),
        (keys.consumer("c1"), keys.consumers),
        (keys.scorer("s1"), keys.scorers),
        (keys.swap_lock, keys.all_models),
        (keys.backfill("v1"), keys.all_models),
        (keys.titles, keys.everything),
        (keys.requests, keys.everything),
    ]
    for key, pattern in pairs:
        assert key.startswith("p:") and fnmatch.fnmatchcase(key, pattern), (key, pattern)
    assert keys.user_id(keys.user("a:b").encode()) == "a:b"
    assert Keyspace.name_in(keys.scorer("h:1:x"), keys.scorers) == "h:1:x"


def test_acl_rules_are_derived_from_the_keyspace() -> None:
    keys = Keyspace("shop", "shop:q")
    scorer = " ".join(acl_rules("scorer", "shop", "shop:q"))
    for pattern in (keys.requests, keys.takings, keys.users, keys.replies, keys.scorers):
        assert pattern in scorer, pattern
    assert keys.users in " ".join(acl_rules("consumer", "shop"))
    assert "~shop:rpc:requests" in acl_rules("client", "shop")  # the default queue


def test_the_titles_share_the_control_keys_hash_tag_on_a_cluster() -> None:
    assert Keyspace("p").titles == "p:catalog:titles"
    cluster = Keyspace("p", cluster=True)
    assert cluster.titles == "p:{p}:catalog:titles"
    assert cluster.titles.split(":catalog")[0] == cluster.models("x").split(":models")[0]
