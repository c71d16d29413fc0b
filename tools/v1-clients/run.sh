#!/usr/bin/env bash
# Runs two real hosted-API (/api/v1) clients against roost with ten simulated thermostats and
# prints how many requests each makes at start-up and per poll round (the figures behind the
# default V1_RATE_LIMIT_PER_MINUTE), after exercising every call they make.
#   - Homebridge: homebridge-nolongerevil-nest 1.3.0 from npm (its dist/api.js).
#   - Home Assistant: patricktr/NoLongerEvil-HomeAssistant's api.py, const.py, exceptions.py
#     (not on a registry): put them in a package directory `nle/` under $HA_CLIENT_DIR.
# Needs node, npm and python3 with aiohttp. Uses ports 18000/18082 and a database in a temp dir.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
roost="${ROOST:-$here/../../target/debug/roost}"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
export SQLITE3_DB_PATH="$work/db.sqlite" SERVER_HOST=127.0.0.1 SERVER_PORT=18000 CONTROL_HOST=127.0.0.1 \
       CONTROL_PORT=18082 API_ORIGIN=http://127.0.0.1:18000 WEATHER_UPSTREAM_URL=http://127.0.0.1:9/weather/v1 RUST_LOG=warn
"$roost" >"$work/server.log" 2>&1 &
for _ in $(seq 100); do curl -sf http://127.0.0.1:18082/health >/dev/null && break; sleep 0.1; done
"$roost" sim run --url http://127.0.0.1:18000 --count 10 >"$work/sim.log" 2>&1 &
for _ in $(seq 100); do [ "$(grep -c booted "$work/sim.log")" = 10 ] && break; sleep 0.1; done
base=http://127.0.0.1:18082/api/v1
if [ -z "${HB_API_JS:-}" ]; then
  (cd "$work" && npm pack -s homebridge-nolongerevil-nest@1.3.0 >/dev/null && tar xzf homebridge-nolongerevil-nest-1.3.0.tgz)
  export HB_API_JS="$work/package/dist/api.js"
fi
echo "homebridge: $(node "$here/homebridge.js" "$base" "$("$roost" keys create --scopes read,write 2>/dev/null)")"
if [ -n "${HA_CLIENT_DIR:-}" ]; then
  echo "home assistant: $(python3 "$here/ha_cloud.py" "$base" "$("$roost" keys create --scopes read,write 2>/dev/null)")"
fi
