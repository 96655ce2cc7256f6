"""The HTTP gateway on a real stack (redis-server, Tansu, a consumer and a scorer in
threads): health and readiness, recommendations, events, models and the admin key."""

from __future__ import annotations

import time

import pytest
import redis

from ledrec.settings import Settings
from tests.helpers import (
    publish_model,
    random_model,
    running_consumer,
    running_gateway,
    running_server,
    wait_until,
)

pytestmark = pytest.mark.gateway
API_KEY = "admin-key"


def test_the_gateway_serves_recommendations_events_and_models(
    settings: Settings, redis_client: redis.Redis
) -> None:
    settings = settings.model_copy(update={"gateway_api_key": API_KEY})
    with running_gateway(settings) as http:
        assert http.get("/healthz").json() == {"status": "alive"}
        not_ready = http.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["checks"]["model"] == "no active model"
        assert http.get("/v1/users/u1/recommendations").status_code == 504  # no scorer yet

        v1 = publish_model(settings, redis_client, random_model(n_items=200, dim=8, seed=1))
        with running_consumer(settings, redis_client), running_server(settings, redis_client):
            wait_until(lambda: http.get("/readyz").status_code == 200, 30, "ready", step=0.1)
            assert http.get("/readyz").json()["checks"] == {
                "redis": "ok", "model": "ok", "scorer": "ok", "broker": "ok",
            }  # fmt: skip

            before = http.get("/v1/users/alice/recommendations", params={"k": 5})
            assert before.status_code == 200, before.text
            assert len(before.json()["items"]) == 5
            assert before.json()["version"] == v1.version
            assert before.json()["source"] == "popularity"  # nobody knows alice yet

            posted = http.post("/v1/events", json=[
                {"user_id": "alice", "item_id": "i3", "type": "view"},
                {"user_id": "alice", "item_id": "i7", "type": "click", "ts": time.time()},
                {"user_id": "alice", "item_id": "i9", "type": "teleport"},
                {"user_id": "alice", "item_id": "i1", "type": "view", "ts": 1.7e12},
            ])  # fmt: skip
            assert posted.status_code == 200, posted.text
            body = posted.json()
            assert body["accepted"] == 2
            assert [r["index"] for r in body["refused"]] == [2, 3]
            assert "teleport" in body["refused"][0]["reason"]
            assert "millisecond" in body["refused"][1]["reason"]

            def changed() -> bool:
                reply = http.get("/v1/users/alice/recommendations", params={"k": 5}).json()
                return bool(reply["source"] == "state")

            wait_until(changed, 30, "alice's events applied", step=0.1)
            after = http.get("/v1/users/alice/recommendations", params={"k": 5}).json()
            assert after["items"] != before.json()["items"]
            seen = {"i3", "i7"}
            assert not seen & {i["item_id"] for i in after["items"]}  # seen items left out
            left_out = after["items"][0]["item_id"]
            fewer = http.get(
                "/v1/users/alice/recommendations", params={"k": 5, "exclude": [left_out]}
            ).json()
            assert left_out not in {i["item_id"] for i in fewer["items"]}
            assert len(fewer["items"]) == 5

            timeline = http.post("/v1/recommendations", json={"items": ["i3", "i7"], "k": 3})
            assert timeline.status_code == 200 and timeline.json()["source"] == "items"
            assert http.post("/v1/recommendations", json={"items": "i3"}).status_code == 422
            assert http.get("/v1/users/alice/recommendations", params={"k": 0}).status_code == 422

            # models: listed; activation and rollback need the admin key
            v2 = publish_model(
                settings, redis_client, random_model(n_items=200, dim=8, seed=2), activate=False
            )
            listed = http.get("/v1/models").json()
            assert listed["active"] == v1.version and v2.version in listed["versions"]
            refused = http.post(f"/v1/models/{v2.version}/activate")
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
            wrong = http.post(f"/v1/models/{v2.version}/activate", headers={"X-API-Key": "x"})
            assert wrong.status_code == 401
            admin = {"X-API-Key": API_KEY}
            swapped = http.post(
                f"/v1/models/{v2.version}/activate", params={"force": True}, headers=admin,
                timeout=60.0,
            )  # fmt: skip
            assert swapped.status_code == 200, swapped.text
            assert swapped.json() == {"version": v2.version, "previous": v1.version}
            wait_until(
                lambda: http.get("/v1/users/alice/recommendations").json()["version"]
                == v2.version, 30, "v2 serving", step=0.1,
            )  # fmt: skip
            back = http.post("/v1/models/rollback", headers=admin, timeout=60.0)
            assert back.status_code == 200 and back.json()["version"] == v1.version
            unknown = http.post("/v1/models/nope/activate", headers=admin)
            assert unknown.status_code == 400

        openapi = http.get("/openapi.json").json()
        assert "/v1/users/{user_id}/recommendations" in openapi["paths"]
