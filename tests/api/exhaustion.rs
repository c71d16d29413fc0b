//! Issue 12 against the real binary, where the process matters: its file-descriptor limit and
//! what it logs.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use roost::sim::http::{Client, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

struct Roost {
    child: Child,
    device: u16,
    control: u16,
    _dir: tempfile::TempDir,
}

impl Roost {
    /// Starts the binary with `env` and at most `fds` open files (soft and hard limit), and
    /// waits until it is healthy.
    async fn start(env: &[(&str, &str)], fds: u32, stdout: Stdio) -> Roost {
        let dir = tempfile::tempdir().unwrap();
        let (device, control) = (free_port(), free_port());
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {fds} && exec \"$0\""))
            .arg(env!("CARGO_BIN_EXE_roost"))
            .env_remove("RUST_LOG")
            .env("SERVER_HOST", "127.0.0.1")
            .env("SERVER_PORT", device.to_string())
            .env("CONTROL_HOST", "127.0.0.1")
            .env("CONTROL_PORT", control.to_string())
            .envs(db_env(&dir.path().join("roost.sqlite")).await)
            .current_dir(dir.path())
            .stdout(stdout)
            .stderr(Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("start roost");
        let control_client = Client::new(&format!("http://127.0.0.1:{control}")).unwrap();
        let ready = async {
            loop {
                if control_client.send(&Request::get("/health")).await.is_ok_and(|r| r.status() == 200) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), ready).await.expect("roost became healthy");
        Roost { child, device, control, _dir: dir }
    }

    fn client(&self, port: u16) -> Client {
        Client::new(&format!("http://127.0.0.1:{port}")).unwrap()
    }

    /// Stops the process and returns what it printed.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            use std::io::Read;
            let _ = stdout.read_to_string(&mut out);
        }
        let _ = self.child.wait();
        out
    }
}

impl Drop for Roost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn a_flood_of_slow_bodies_cannot_starve_the_control_port() {
    // 256 descriptors: the device port may hold 144 connections, the control port 48.
    let roost = Roost::start(&[("REQUEST_TIMEOUT_SECONDS", "3")], 256, Stdio::null()).await;
    let mut flood = Vec::new();
    for _ in 0..250 {
        let mut stream = TcpStream::connect(("127.0.0.1", roost.device)).await.unwrap();
        let head = format!(
            "POST /nest/transport/put HTTP/1.1\r\nHost: r\r\nX-nl-device-id: {SERIAL}\r\nContent-Length: 500\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        flood.push(stream);
    }
    let health = tokio::time::timeout(WAIT, roost.client(roost.control).send(&Request::get("/health")))
        .await
        .expect("the control port answers during the flood")
        .unwrap();
    assert_eq!(health.status(), 200);
    // The slow bodies are cut (408) and the device port serves again.
    let ping =
        tokio::time::timeout(Duration::from_secs(30), roost.client(roost.device).send(&Request::get("/nest/ping")))
            .await
            .expect("the device port serves again")
            .unwrap();
    assert_eq!(ping.status(), 200);
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, flood[0].read_to_end(&mut answer)).await.expect("cut").unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&answer));
}

#[tokio::test]
async fn malformed_requests_are_logged_at_debug_with_one_warning() {
    let roost = Roost::start(&[], 1024, Stdio::piped()).await;
    for _ in 0..20 {
        let mut stream = TcpStream::connect(("127.0.0.1", roost.device)).await.unwrap();
        stream.write_all(b"GET /nest/ping HTTP/1.1\r\nHost: r\r\nnot a header\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await.expect("an answer").unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 400"), "{}", String::from_utf8_lossy(&answer));
    }
    // The server keeps serving.
    let ping = roost.client(roost.device).send(&Request::get("/nest/ping")).await.unwrap();
    assert_eq!(ping.status(), 200);
    let log = roost.stop();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let warnings = log.lines().filter(|l| l.contains("WARN") && l.contains("malformed")).count();
    assert_eq!(warnings, 1, "{log}");
}
