"""Prepares a Home Assistant configuration directory for roost's Home Assistant test.

Writes configuration.yaml (HTTP API on 127.0.0.1:<http_port>), an MQTT config entry for the
broker on 127.0.0.1:<mqtt_port> with discovery on, and an owner with a long-lived access token.
Prints the access token. Run with the Home Assistant virtual environment's Python (it uses
PyJWT, which Home Assistant depends on).

    python prepare.py CONFIG_DIR MQTT_PORT HTTP_PORT
"""

import json
import os
import secrets
import sys
import time
from datetime import datetime, timezone

import jwt

HA_VERSION = "2024.3.3"


def storage(key, data):
    return {"version": 1, "minor_version": 1, "key": key, "data": data}


def main():
    config_dir, mqtt_port, http_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    os.makedirs(os.path.join(config_dir, ".storage"), exist_ok=True)
    with open(os.path.join(config_dir, "configuration.yaml"), "w") as f:
        f.write(
            "homeassistant:\n"
            "  name: roost-ci\n"
            "  unit_system: metric\n"
            "  time_zone: UTC\n"
            "  latitude: 0\n"
            "  longitude: 0\n"
            "  elevation: 0\n"
            "  currency: EUR\n"
            "  country: US\n"
            "http:\n"
            "  server_host: 127.0.0.1\n"
            f"  server_port: {http_port}\n"
            "api:\n"
            "logger:\n"
            "  default: info\n"
        )
    entry = {
        "entry_id": "roostmqttentry00000000000000000",
        "version": 1,
        "minor_version": 1,
        "domain": "mqtt",
        "title": "127.0.0.1",
        "data": {"broker": "127.0.0.1", "port": mqtt_port, "discovery": True},
        "options": {},
        "pref_disable_new_entities": False,
        "pref_disable_polling": False,
        "source": "user",
        "unique_id": None,
        "disabled_by": None,
    }
    write(config_dir, "core.config_entries", {"entries": [entry]})

    user_id = secrets.token_hex(16)
    token_id = secrets.token_hex(16)
    jwt_key = secrets.token_hex(64)
    now = datetime.now(timezone.utc).isoformat()
    auth = {
        "users": [
            {
                "id": user_id,
                "group_ids": ["system-admin"],
                "is_owner": True,
                "is_active": True,
                "name": "roost-ci",
                "system_generated": False,
                "local_only": False,
            }
        ],
        "groups": [
            {"id": "system-admin", "name": "Administrators"},
            {"id": "system-users", "name": "Users"},
            {"id": "system-read-only", "name": "Read Only"},
        ],
        "credentials": [],
        "refresh_tokens": [
            {
                "id": token_id,
                "user_id": user_id,
                "client_id": None,
                "client_name": "roost-ci",
                "client_icon": None,
                "token_type": "long_lived_access_token",
                "created_at": now,
                "access_token_expiration": 86400.0,
                "token": secrets.token_hex(64),
                "jwt_key": jwt_key,
                "last_used_at": None,
                "last_used_ip": None,
                "expire_at": None,
                "credential_id": None,
                "version": HA_VERSION,
            }
        ],
    }
    write(config_dir, "auth", auth)
    # Onboarding done: no onboarding views, nothing waits for a person.
    write(config_dir, "onboarding", {"done": ["user", "core_config", "analytics", "integration"]})
    issued = int(time.time())
    print(jwt.encode({"iss": token_id, "iat": issued, "exp": issued + 86400}, jwt_key, algorithm="HS256"))


def write(config_dir, key, data):
    with open(os.path.join(config_dir, ".storage", key), "w") as f:
        json.dump(storage(key, data), f)


if __name__ == "__main__":
    main()
