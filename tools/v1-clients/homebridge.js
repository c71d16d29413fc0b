// Drives the real Homebridge plugin's hosted-API client (homebridge-nolongerevil-nest 1.3.0,
// dist/api.js) against roost: counts the requests of startup and of one poll round, then
// exercises every call it makes and checks what it parses.
const { NoLongerEvilAPI } = require(process.env.HB_API_JS || './package/dist/api.js');
const [base, key] = process.argv.slice(2);
const log = { debug() {}, info() {}, warn: (...a) => console.error('WARN', ...a), error: (...a) => console.error('ERROR', ...a) };
const api = new NoLongerEvilAPI(key, log, base);
let count = 0;
const once = api.requestOnce.bind(api);
api.requestOnce = (...a) => { count++; return once(...a); };
(async () => {
  const states = await api.getThermostatStates();          // platform discovery
  for (const s of states) await api.getSchedule(s.deviceId); // each accessory's initScheduleState
  const startup = count; count = 0;
  for (const s of states) await api.getThermostatState(s.deviceId); // each accessory's poll timer
  const perPoll = count;
  const id = states[0].deviceId;
  await api.setTemperature(id, 21.5, 'heat');
  await api.setTemperatureRange(id, 19, 24);
  await api.setMode(id, 'heat-cool');
  await api.setAwayMode(id, true);
  await api.setSchedule(id, { ver: 2, name: 'hb', schedule_mode: 'HEAT', days: { '0': { '0': { time: 21600, type: 'HEAT', temp: 21 } } } });
  const sched = await api.getSchedule(id);
  await api.clearSchedule(id);
  const after = await api.getThermostatState(id);
  console.log(JSON.stringify({ devices: states.length, startup, perPoll, names: states.map(s => s.name).slice(0, 2),
    after: { mode: after.hvacMode, low: after.targetTemperatureLow, high: after.targetTemperatureHigh, target: after.targetTemperature, away: after.awayMode, canCool: after.canCool },
    mondayFirst: sched && sched.days['0']['0'] }));
})().catch(e => { console.error(e); process.exit(1); });
