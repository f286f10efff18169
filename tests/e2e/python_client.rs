//! A client in another language, written from `docs/protocol.md` alone
//! (`tests/python/`), run against a real bus: hello, subscribe, snapshot, set with an
//! answer, errors, get, publish, bad input, bye. Keeps the document true.

use std::process::{Command, Stdio};

use avbus::protocol::Role;
use avbus::value::Value;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_written_from_the_protocol_document() {
    let probe = Command::new("python3")
        .args(["-c", "import msgpack"])
        .status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "python3 with msgpack is needed: run scripts/test, which installs it"
    );
    let bus = bus(config()).await;
    let (_adapter, _seen) = lab_adapter(&bus).await;
    let tool = client(&bus, "setup", Role::Tool).await;
    tool.publish("py/greeting", Value::from("hello"), true)
        .await
        .unwrap();

    let addr = bus.tcp.to_string();
    let child = Command::new("python3")
        .args(["tests/python/check.py", &addr])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    // check.py bounds itself at 20 s; this bound is the test's own.
    let out = within(
        "the Python client",
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "check.py failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(
        stdout.contains("ok - t: meter published over UDP"),
        "every check reported: {stdout}"
    );
    bus.shutdown().await;
}
