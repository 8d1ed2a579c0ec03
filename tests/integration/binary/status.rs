//! `mailfetch status` after a failing and a succeeding poll: read from the
//! status record each poll writes, with no server needed to answer.

use testkit::fake_pop3::{FakePop3, Message, PASSWORD, Script};
use testkit::run::Case;

fn status(case: &Case, args: &[&str]) -> String {
    let run = case.run_with(&[&["status"], args].concat());
    assert_eq!(run.code, Some(0), "{run:?}");
    run.stdout
}

#[test]
fn status_shows_the_last_poll_and_the_last_success() {
    let mail: Vec<Message> = (1..=3)
        .map(|n| Message::new(&format!("uid-{n}"), &format!("Subject: {n}\n\nbody {n}\n")))
        .collect();
    let server = FakePop3::start(mail, Script::default());
    // keep = true: what the state knows after the poll is the mail.
    let case = Case::account("pop3", server.port(), "wrong", "10s").set("keep", "true");

    assert_eq!(status(&case, &[]), "fake: never polled\n");

    let failed = case.run();
    assert_eq!(failed.code, Some(3), "{failed:?}");
    let json: serde_json::Value = serde_json::from_str(&status(&case, &["--json"])).unwrap();
    let line = &json[0];
    assert_eq!(line["account"], "fake");
    assert_eq!(line["folder"], serde_json::Value::Null);
    assert_eq!(line["exit_code"], 3);
    assert_eq!(line["last_success"], serde_json::Value::Null);
    assert!(line["last_poll"].as_str().unwrap().ends_with('Z'), "{line}");
    assert!(
        line["message"].as_str().unwrap().contains("stopped"),
        "{line}"
    );

    let case = case.set("password", &format!("\"{PASSWORD}\""));
    let ok = case.run();
    assert_eq!(ok.code, Some(0), "{ok:?}");
    let json: serde_json::Value = serde_json::from_str(&status(&case, &["--json"])).unwrap();
    let line = &json[0];
    assert_eq!(line["exit_code"], 0, "{line}");
    assert_eq!(line["delivered"], 3, "{line}");
    assert_eq!(line["known"], 3, "{line}");
    assert_eq!(line["pending"], 0, "{line}");
    assert_eq!(line["last_success"], line["last_poll"], "{line}");
    let text = status(&case, &[]);
    assert!(text.starts_with("fake: last poll "), "{text}");
    assert!(text.contains("(exit 0)"), "{text}");
}
