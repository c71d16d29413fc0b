//! The event stream: compatible, resumable (across a restart too), alive, filtered, bounded
//! and observable.

use std::time::Duration;

use roost::sim::http::{Client, Conn, Head, Request};
use serde_json::{Value, json};

use crate::helpers::*;

/// How long a reader with a tiny receive buffer may wait for more. After its window has been
/// shut for a while, the server's kernel may learn that it opened again only at its next
/// zero-window probe, and those back off to seconds (seen: 2.6 s gaps, with `ss` showing the
/// persist timer, when the debug build runs beside other tests).
const PROBE_WAIT: Duration = Duration::from_secs(30);

/// One parsed server-sent event (or comment).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Sse {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<String>,
    pub comment: Option<String>,
}

impl Sse {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().unwrap_or("null")).unwrap()
    }
}

pub(crate) struct Stream {
    conn: Conn,
    pub head: Head,
    buffer: String,
}

impl Stream {
    pub async fn open(client: &Client, path: &str, last_event_id: Option<&str>) -> Stream {
        let mut req = Request::get(path).header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let mut conn = client.connect().await.unwrap();
        conn.send_request(&req).await.unwrap();
        let head = tokio::time::timeout(WAIT, conn.read_head()).await.unwrap().unwrap();
        Stream { conn, head, buffer: String::new() }
    }

    /// The next event or comment, waiting at most `limit`.
    pub async fn next(&mut self, limit: Duration) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                assert!(!frame.contains('\r'), "LF line endings only: {frame:?}");
                let mut sse = Sse::default();
                for line in frame.lines().filter(|l| !l.is_empty()) {
                    if let Some(c) = line.strip_prefix(':') {
                        sse.comment = Some(c.trim().to_string());
                        continue;
                    }
                    let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                    let slot = match field {
                        "id" => &mut sse.id,
                        "event" => &mut sse.event,
                        "data" => &mut sse.data,
                        "retry" => &mut sse.retry,
                        other => panic!("unexpected field {other}"),
                    };
                    *slot = Some(value.to_string());
                }
                return Some(sse);
            }
            match tokio::time::timeout(limit, self.conn.next_chunk()).await {
                Ok(Ok(Some(chunk))) => self.buffer.push_str(std::str::from_utf8(&chunk).unwrap()),
                _ => return None,
            }
        }
    }

    /// The next event that is not a comment or a bare `retry:`.
    pub async fn next_event(&mut self) -> Option<Sse> {
        self.next_event_within(WAIT).await
    }

    /// The next event with data, waiting at most `limit` for each frame.
    pub async fn next_event_within(&mut self, limit: Duration) -> Option<Sse> {
        loop {
            let e = self.next(limit).await?;
            if e.data.is_some() {
                return Some(e);
            }
        }
    }
}

#[tokio::test]
async fn compatible_stream_one_message_per_change_with_ids() {
    let app = TestApp::start(&[]).await;
    let t = app.booted(SERIAL).await;
    let mut s = Stream::open(&app.control, "/api/events", None).await;
    assert_eq!(s.head.status, 200);
    assert_eq!(s.head.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.head.header("cache-control"), Some("no-cache"));
    assert_eq!(s.head.header("x-accel-buffering"), Some("no"));
    let first = s.next(WAIT).await.unwrap();
    assert!(first.retry.is_some(), "a retry hint first: {first:?}");
    let extra = s.next(Duration::from_millis(300)).await;
    assert!(extra.is_none(), "no message events on connect: {extra:?}");

    app.command(SERIAL, "set_temperature", json!(22)).await;
    let e = s.next_event().await.unwrap();
    assert_eq!(e.event, None, "a plain message");
    assert_eq!(e.json(), json!({"serial": SERIAL}));
    let id1: i64 = e.id.unwrap().parse().unwrap();

    // A device PUT that changes values is an event; one that changes nothing is not.
    t.set_local("device", json!({"current_temperature": 19.0})).await.unwrap();
    let e = s.next_event().await.unwrap();
    let id2: i64 = e.id.unwrap().parse().unwrap();
    assert!(id2 > id1);
    t.set_local("device", json!({"current_temperature": 19.0})).await.unwrap();
    let r = app.control_post("/notify-device", json!({"serial": SERIAL})).await;
    assert_eq!(r.status(), 200);
    let e = s.next_event().await.unwrap();
    assert_eq!(e.json(), json!({"serial": SERIAL}));
    assert_eq!(e.id.unwrap().parse::<i64>().unwrap(), id2 + 1, "the unchanged PUT produced no event");
}

#[tokio::test]
async fn resuming_replays_what_was_missed_even_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let app = TestApp::start_in(tmp.path().to_path_buf(), &[]).await;
    app.booted(SERIAL).await;
    let mut s = Stream::open(&app.control, "/api/events", None).await;
    app.command(SERIAL, "set_temperature", json!(20)).await;
    let seen = s.next_event().await.unwrap().id.unwrap();
    drop(s);
    app.command(SERIAL, "set_temperature", json!(21)).await;
    app.command(SERIAL, "set_temperature", json!(22)).await;
    app.stop().await;

    let app = TestApp::start_in(tmp.path().to_path_buf(), &[]).await;
    app.command(SERIAL, "set_temperature", json!(23)).await;
    let mut s = Stream::open(&app.control, "/api/events", Some(&seen)).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let e = s.next_event().await.unwrap();
        assert_eq!(e.json(), json!({"serial": SERIAL}));
        ids.push(e.id.unwrap().parse::<i64>().unwrap());
    }
    let seen: i64 = seen.parse().unwrap();
    assert_eq!(ids, vec![seen + 1, seen + 2, seen + 3]);
    // Then live events follow, without duplicates.
    app.command(SERIAL, "set_temperature", json!(24)).await;
    assert_eq!(s.next_event().await.unwrap().id.unwrap().parse::<i64>().unwrap(), seen + 4);

    // The same through the query parameter browsers can set.
    let mut q = Stream::open(&app.control, &format!("/api/events?lastEventId={}", seen + 3), None).await;
    assert_eq!(q.next_event().await.unwrap().id.unwrap().parse::<i64>().unwrap(), seen + 4);

    // An id the server no longer has (or never had) gets a reset.
    let mut r = Stream::open(&app.control, "/api/events", Some("999999")).await;
    let e = r.next_event().await.unwrap();
    assert_eq!(e.event.as_deref(), Some("reset"));
    assert_eq!(e.json()["type"], "reset");
    let bad = app.control.send(&Request::get("/api/events").header("Last-Event-ID", "abc")).await.unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn keepalive_comments_flow_on_an_idle_stream() {
    let app = TestApp::start(&["--sse-keepalive-seconds=0.2"]).await;
    let mut s = Stream::open(&app.control, "/api/events", None).await;
    let mut comments = 0;
    while comments < 2 {
        let e = s.next(WAIT).await.expect("keepalive within the interval");
        if e.comment.is_some() {
            comments += 1;
        }
    }
}

#[tokio::test]
async fn filters_by_serial_and_named_events_are_opt_in() {
    let app = TestApp::start(&["--availability-timeout-seconds=300"]).await;
    let other = "02AA01AC00000002";
    app.booted(SERIAL).await;
    app.booted(other).await;
    let mut only_other =
        Stream::open(&app.control, &format!("/api/events?serial={}", other.to_lowercase()), None).await;
    let mut named = Stream::open(&app.control, "/api/events?events=command,pairing", None).await;
    let mut plain = Stream::open(&app.control, "/api/events", None).await;

    app.command(SERIAL, "set_temperature", json!(21.5)).await;
    app.command(other, "set_temperature", json!(19.5)).await;

    let e = only_other.next_event().await.unwrap();
    assert_eq!(e.json(), json!({"serial": other}), "the first serial's change was filtered out");

    // The named-event client gets the message and the command event for each change.
    let m = named.next_event().await.unwrap();
    assert_eq!(m.event, None);
    let c = named.next_event().await.unwrap();
    assert_eq!(c.event.as_deref(), Some("command"));
    assert_eq!(c.id, m.id, "the command event carries the change id");
    let detail = c.json();
    assert_eq!(detail["type"], "command");
    assert_eq!(detail["serial"], SERIAL);
    assert_eq!(detail["command"], "set_temperature");
    assert_eq!(detail["value"], json!(21.5));
    assert_eq!(detail["values"]["target_temperature"], json!(21.5));
    assert!(detail["timestamp"].as_str().unwrap().ends_with('Z'));

    // The plain client never sees named events.
    for _ in 0..2 {
        assert_eq!(plain.next_event().await.unwrap().event, None);
    }

    let bad = app.control.send(&Request::get("/api/events?events=everything")).await.unwrap();
    assert_eq!(bad.status(), 400);
    let bad = app.control.send(&Request::get("/api/events?serial=x")).await.unwrap();
    assert_eq!(bad.status(), 400);

    // Pairing events: deleting a device.
    let r = app.control.send(&Request::new("DELETE", "/api/device").json(&json!({"serial": other}))).await.unwrap();
    assert_eq!(r.status(), 200);
    loop {
        let e = named.next_event().await.unwrap();
        if e.event.as_deref() == Some("pairing") {
            assert_eq!(e.json()["action"], "deleted");
            assert_eq!(e.json()["serial"], other);
            break;
        }
    }
}

#[tokio::test]
async fn availability_events_when_a_thermostat_comes_and_goes() {
    let app = TestApp::start(&["--availability-timeout-seconds=0.5"]).await;
    let mut s = Stream::open(&app.control, "/api/events?events=availability", None).await;
    let t = app.booted(SERIAL).await;
    let went = loop {
        let e = s.next_event().await.expect("availability events");
        if e.event.as_deref() == Some("availability") && e.json()["online"] == json!(false) {
            break e;
        }
    };
    assert_eq!(went.json()["serial"], SERIAL);
    let status = app.control.send(&Request::get(&format!("/status?serial={SERIAL}"))).await.unwrap().json().unwrap();
    assert_eq!(status["is_available"], false);
    t.set_local("device", json!({"current_temperature": 18.0})).await.unwrap();
    loop {
        let e = s.next_event().await.unwrap();
        if e.event.as_deref() == Some("availability") {
            assert_eq!(e.json()["online"], true);
            break;
        }
    }
}

#[tokio::test]
async fn too_many_streams_get_a_503_and_stats_tell_what_is_open() {
    let app = TestApp::start(&["--sse-max-clients=2"]).await;
    let _a = Stream::open(&app.control, "/api/events?serial=02AA01AC12345678", None).await;
    let _b = Stream::open(&app.control, "/api/events?events=pairing", None).await;
    let r = app.control.send(&Request::get("/api/events")).await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.json().unwrap()["error"].as_str().unwrap().contains("SSE_MAX_CLIENTS"));
    let stats = app.control.send(&Request::get("/api/events/stats")).await.unwrap().json().unwrap();
    assert_eq!(stats["open_streams"], 2);
    assert_eq!(stats["max_clients"], 2);
    assert_eq!(stats["streams"][0]["serials"], json!([SERIAL]));
    assert_eq!(stats["streams"][1]["events"], json!(["pairing"]));
    let all = app.control.send(&Request::get("/api/stats")).await.unwrap().json().unwrap();
    assert_eq!(all["events"]["open_streams"], 2);
}

/// Changes committed concurrently reach every stream whole, once each and in id order: the
/// fan-out writes straight to a waiting stream's socket, queues for one whose socket is full
/// (a reader that has not read yet), and sends what arrives together as one chunk.
#[tokio::test]
async fn a_burst_of_changes_reaches_every_stream_once_and_in_order() {
    const MARKER: &str = "02AA01AC87654321";
    let app = TestApp::start(&[]).await;
    app.booted(SERIAL).await;
    app.booted(MARKER).await;
    let mut readers = Vec::new();
    for _ in 0..3 {
        readers.push(Stream::open(&app.control, "/api/events", None).await);
    }
    let mut slow = app.control.connect_with_receive_buffer(2048).await.unwrap();
    slow.send_request(&Request::get("/api/events")).await.unwrap();
    let head = slow.read_head().await.unwrap();
    let mut slow = Stream { conn: slow, head, buffer: String::new() };
    let senders: Vec<_> = (0..8)
        .map(|task| {
            let control = app.control.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    let target = 10.0 + f64::from(task * 25 + i) / 10.0;
                    let command = json!({"serial": SERIAL, "command": "set_temperature", "value": target});
                    let r = control.send(&Request::post("/command").json(&command)).await.unwrap();
                    assert_eq!(r.status(), 200);
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    // The last change is another thermostat's: it says when a stream has seen everything.
    let last = app.command(MARKER, "set_temperature", json!(25)).await;
    assert_eq!(last.status(), 200);
    let stats: Value = app.control.send(&Request::get("/api/events/stats")).await.unwrap().json().unwrap();
    assert_eq!(stats["clients_dropped"], 0);
    let mut seen = Vec::new();
    for stream in readers.iter_mut().chain([&mut slow]) {
        let mut ids = Vec::new();
        loop {
            // The slow reader's shut window may reopen only at a zero-window probe (seconds).
            let e = stream.next_event_within(PROBE_WAIT).await.expect("every event, then the marker");
            ids.push(e.id.as_deref().unwrap().parse::<i64>().unwrap());
            if e.json() == json!({"serial": MARKER}) {
                break;
            }
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in order, each once: {ids:?}");
        seen.push(ids);
    }
    assert!(seen[0].len() > 50, "200 commands, most of them a change: {}", seen[0].len());
    assert!(seen.iter().all(|ids| ids == &seen[0]), "every stream saw the same events");
}

#[tokio::test]
async fn a_client_that_does_not_read_is_cut_off_and_can_resume() {
    let app = TestApp::start(&[]).await;
    app.booted(SERIAL).await;
    // A stream whose reader never reads, with a small receive window so buffers fill quickly.
    let mut conn = app.control.connect_with_receive_buffer(4096).await.unwrap();
    conn.send_request(&Request::get("/api/events")).await.unwrap();
    let head = conn.read_head().await.unwrap();
    assert_eq!(head.status, 200);
    let first = app.command(SERIAL, "set_temperature", json!(15.0)).await;
    assert_eq!(first.status(), 200);
    for round in 0..100 {
        for i in 0..50 {
            let r = app.command(SERIAL, "set_temperature", json!(16.0 + (i % 10) as f64)).await;
            assert_eq!(r.status(), 200);
        }
        let stats = app.control.send(&Request::get("/api/events/stats")).await.unwrap().json().unwrap();
        if stats["clients_dropped"] == 1 {
            // Its response is counted (towards SSE_MAX_CLIENTS) until the connection goes.
            assert_eq!(stats["open_streams"], 1, "cut off after {} commands", round * 50);
            // Reading now gets what was buffered, then the end (the loop ends at the server's
            // close, not at the limit); it resumes by id without a gap.
            let mut s = Stream { conn, head, buffer: String::new() };
            let mut last = None;
            while let Some(e) = s.next(PROBE_WAIT).await {
                if e.id.is_some() {
                    last = e.id;
                }
            }
            let last = last.expect("some events arrived before the cut");
            drop(s);
            for _ in 0..200 {
                let stats = app.control.send(&Request::get("/api/events/stats")).await.unwrap().json().unwrap();
                if stats["open_streams"] == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut resumed = Stream::open(&app.control, "/api/events", Some(&last)).await;
            let e = resumed.next_event().await.unwrap();
            assert_eq!(e.id.unwrap().parse::<i64>().unwrap(), last.parse::<i64>().unwrap() + 1);
            return;
        }
    }
    panic!("the stuck client was never cut off");
}

#[tokio::test]
async fn with_an_api_key_the_stream_takes_it_in_all_three_forms() {
    let app = TestApp::start(&["--control-api-key=s3cret"]).await;
    let r = app.control.send(&Request::get("/api/events")).await.unwrap();
    assert_eq!(r.status(), 401);
    let r = app.control.send(&Request::get("/api/events?token=wrong")).await.unwrap();
    assert_eq!(r.status(), 401);
    for req in [
        Request::get("/api/events?token=s3cret"),
        Request::get("/api/events").header("Authorization", "Bearer s3cret"),
        Request::get("/api/events").header("X-API-Key", "s3cret"),
    ] {
        let mut conn = app.control.connect().await.unwrap();
        conn.send_request(&req).await.unwrap();
        let head = conn.read_head().await.unwrap();
        assert_eq!(head.status, 200, "{req:?}");
        assert_eq!(head.header("content-type"), Some("text/event-stream"));
    }
}
