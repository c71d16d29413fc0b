use roost::sim::http::Request;
use serde_json::{Value, json};

use crate::helpers::*;

async fn expect_error(app: &TestApp, req: Request, status: u16, message_part: &str) {
    let r = app.device.send(&req).await.unwrap();
    assert_eq!(r.status(), status, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json().unwrap();
    let msg = j["error"].as_str().unwrap_or_else(|| panic!("error message in {j}"));
    assert!(msg.contains(message_part), "{msg}");
}

#[tokio::test]
async fn bodies_that_cannot_be_understood_get_a_clear_4xx_and_nothing_is_written() {
    let app = TestApp::start(&[]).await;
    for path in ["/nest/transport/put", "/nest/transport/v7/subscribe"] {
        let req =
            |body: Vec<u8>| device_req("POST", path, SERIAL).header("Content-Type", "application/json").body(body);
        expect_error(&app, req(b"not json".to_vec()), 400, "Invalid JSON").await;
        expect_error(&app, req(b"[1,2]".to_vec()), 400, "object").await;
        expect_error(&app, req(vec![0xff, 0xfe, b'{', b'}']), 400, "Invalid JSON").await;
        expect_error(
            &app,
            req(br#"{"objects":[{"object_key":"device.X","value":"hot"}]}"#.to_vec()),
            400,
            "value must be an object",
        )
        .await;
        expect_error(
            &app,
            req(br#"{"objects":[{"object_key":"device.X","object_timestamp":"soon"}]}"#.to_vec()),
            400,
            "object_timestamp",
        )
        .await;
        expect_error(
            &app,
            req(br#"{"objects":[{"object_key":"device.X","if_object_revision":[1]}]}"#.to_vec()),
            400,
            "if_object_revision",
        )
        .await;
        expect_error(&app, req(br#"{"objects":[7]}"#.to_vec()), 400, "objects[0]").await;
        let mut huge = br#"{"objects":[{"object_key":"device.X","value":{"pad":""#.to_vec();
        huge.extend(std::iter::repeat_n(b'a', 1024 * 1024 + 10));
        huge.extend_from_slice(br#""}}]}"#);
        expect_error(&app, req(huge), 413, "larger than").await;
        let no_serial = Request::post(path).json(&json!({"objects": []}));
        expect_error(&app, no_serial, 400, "Device serial required").await;
    }
    // Nothing was stored for the serial, and the server still serves.
    let list = app.device.send(&device_req("GET", &format!("/nest/transport/device/{SERIAL}"), SERIAL)).await.unwrap();
    assert_eq!(list.json().unwrap(), json!({"objects": []}));
    let r = put(
        &app.device,
        SERIAL,
        json!({"objects": [{"object_key": format!("device.{SERIAL}"), "value": {"ok": true}}]}),
    )
    .await;
    assert_eq!(r["objects"][0]["object_revision"], 1);
}

#[tokio::test]
async fn what_a_real_device_can_send_gets_a_200() {
    let app = TestApp::start(&[]).await;
    // Entries without a key or with an empty value are skipped, not refused.
    let body = json!({"session": "s", "objects": [{"value": {"a": 1}}, {"object_key": format!("device.{SERIAL}"), "value": {}}, {"object_key": format!("device.{SERIAL}"), "value": null}]});
    let r = put(&app.device, SERIAL, body).await;
    assert_eq!(r, json!({"objects": []}));
    let r = put(&app.device, SERIAL, json!({"objects": 5})).await;
    assert_eq!(r, json!({"objects": []}));
    // Float revisions and negative ones (seen in captures) are numbers too.
    let body = json!({"chunked": false, "objects": [{"object_key": format!("user.{SERIAL}"), "object_revision": -23671, "object_timestamp": 1766162985.0}]});
    let r = app.device.send(&device_req("POST", "/nest/transport", SERIAL).json(&body)).await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn bad_commands_are_400s_a_person_can_act_on() {
    let app = TestApp::start(&[]).await;
    app.booted(SERIAL).await;
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"serial": SERIAL, "command": "set_temperature", "value": null}), 400, "number"),
        (json!({"serial": SERIAL, "command": "set_temperature", "value": "abc"}), 400, "number"),
        (json!({"serial": SERIAL, "command": "set_temperature", "value": {"low": 25, "high": 20}}), 400, "below"),
        (json!({"serial": SERIAL, "command": "set_temperature", "value": {"high": 17.0}}), 400, "below"),
        (json!({"serial": SERIAL, "command": "warp"}), 400, "Unknown command: warp"),
        (json!({"command": "set_temperature", "value": 20}), 400, "Serial required"),
        (json!({"serial": SERIAL, "value": 20}), 400, "Command required"),
        (json!({"serial": "ZZZZ0000000000", "command": "set_temperature", "value": 20}), 404, "Device not found"),
        (json!({"serial": "abc", "command": "set_temperature", "value": 20}), 400, "not a valid"),
    ];
    for (body, status, part) in cases {
        let r = app.control_post("/command", body.clone()).await;
        assert_eq!(r.status(), status, "{body}");
        let j = r.json().unwrap();
        assert_eq!(j["success"], false);
        assert!(j["message"].as_str().unwrap().contains(part), "{body}: {j}");
    }
    for raw in [b"nope".to_vec(), b"[1]".to_vec()] {
        let r = app
            .control
            .send(&Request::post("/command").header("Content-Type", "application/json").body(raw))
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }
    // Lower-case and dashed serials address the same device; values clamp to its safety range.
    let r = app.command(&SERIAL.to_ascii_lowercase(), "set_temperature", json!(99)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json().unwrap()["data"]["values"]["target_temperature"], json!(35.0));
}

#[tokio::test]
async fn made_up_data_cannot_grow_a_device_without_end() {
    let app = TestApp::start(&[]).await;
    let objects: Vec<Value> = (0..300)
        .map(|i| json!({"object_key": format!("where.{i:04}"), "value": {"name": format!("room {i}")}}))
        .collect();
    let r = put(&app.device, SERIAL, json!({"objects": objects})).await;
    let stored = r["objects"].as_array().unwrap().iter().filter(|o| o["object_revision"] == 1).count();
    assert_eq!(stored, roost::state::bounds::Bounds::default().buckets, "buckets past the limit are refused");
    assert_eq!(r["objects"][299], json!({"object_revision": 0, "object_timestamp": 0, "object_key": "where.0299"}));

    let huge: serde_json::Map<String, Value> = (0..5000).map(|i| (format!("f{i}"), json!(i))).collect();
    let r = put(
        &app.device,
        "02AA01AC00000009",
        json!({"objects": [{"object_key": "device.02AA01AC00000009", "value": huge}]}),
    )
    .await;
    assert_eq!(r["objects"][0]["object_revision"], 0, "a bucket over the field limit is refused");
    // The server keeps serving, and ordinary writes still work.
    let r = put(
        &app.device,
        SERIAL,
        json!({"objects": [{"object_key": format!("device.{SERIAL}"), "value": {"ok": true}}]}),
    )
    .await;
    assert_eq!(r["objects"][0]["object_revision"], 0, "the device already holds its bucket limit");
    let r = put(
        &app.device,
        "02AA01AC00000010",
        json!({"objects": [{"object_key": "device.02AA01AC00000010", "value": {"ok": true}}]}),
    )
    .await;
    assert_eq!(r["objects"][0]["object_revision"], 1);
}
