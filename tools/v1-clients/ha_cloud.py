"""Drives the real Home Assistant integration's cloud client (patricktr/NoLongerEvil-HomeAssistant
api.py, NLEApiClient) against roost: one coordinator poll round, then every call it makes."""
import asyncio, json, os, sys
sys.path.insert(0, os.environ.get("HA_CLIENT_DIR", "."))
from nle.api import NLEApiClient

async def main(base, key):
    client = NLEApiClient(key, base_url=base)
    count = 0
    orig = client._request
    async def counted(*a, **k):
        nonlocal count
        count += 1
        return await orig(*a, **k)
    client._request = counted
    devices = await client.get_devices()              # config flow / setup
    startup = count; count = 0
    statuses = [await client.get_device_status(d.id) for d in devices]  # one coordinator poll
    per_poll = count
    d = devices[0].id
    await client.set_temperature(d, 22.0, statuses[0].target_temperature_type)
    await client.set_temperature_range(d, 18.0, 23.0)
    await client.set_hvac_mode(d, "heat-cool")
    await client.set_away_mode(d, True)
    await client.set_fan_mode(d, "on")
    await client.set_fan_timer(d, 900)
    await client.set_fan_mode(d, "off")
    await client.set_schedule(d, {"ver": 2, "schedule_mode": "HEAT", "days": {"2": [{"time": 3600, "type": "HEAT", "temp": 20}]}})
    sched = await client.get_schedule(d)
    s = await client.get_device_status(d)
    print(json.dumps({"devices": len(devices), "startup": startup, "per_poll": per_poll,
        "after": {"mode": s.hvac_mode, "low": s.target_temperature_low, "high": s.target_temperature_high,
                  "away": s.is_away, "eco": s.eco_mode_enabled, "lock": s.temperature_lock_enabled,
                  "can_cool": s.can_cool, "remaining": client._rate_limit_remaining, "reset": client._rate_limit_reset},
        "wednesday": sched["schedule"]["days"]["2"]}))
    await client.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
