//! The poll summary in `--log-format json` carries its figures as fields
//! named for log shippers; the text form stays one readable line.

use serde_json::Value;
use testkit::fake_pop3::{FakePop3, Message, PASSWORD, Script};
use testkit::run::Case;

fn mail() -> Vec<Message> {
    (1..=3)
        .map(|n| Message::new(&format!("uid-{n}"), &format!("Subject: {n}\n\nbody {n}\n")))
        .collect()
}

/// The JSON line whose message is the summary of the account `fake`.
fn summary(stderr: &str) -> Value {
    stderr
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .find(|line| line["fields"]["account"] == "fake")
        .unwrap_or_else(|| panic!("no summary with fields in:\n{stderr}"))
}

#[test]
fn json_summaries_carry_named_fields_and_text_stays_one_line() {
    let server = FakePop3::start(mail(), Script::default());
    let case = Case::account("pop3", server.port(), "wrong", "10s");
    let failed = case.run_with(&["--log-format", "json"]);
    assert_eq!(failed.code, Some(3), "{failed:?}");
    let fields = &summary(&failed.stderr)["fields"];
    assert_eq!(fields["error_kind"], "auth", "{fields}");
    assert!(
        fields["error"]
            .as_str()
            .is_some_and(|e| !e.contains("wrong")),
        "{fields}"
    );
    assert_eq!(fields["delivered"], 0, "{fields}");

    let case = case.set("password", &format!("\"{PASSWORD}\""));
    let run = case.run_with(&["--log-format", "json"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let line = summary(&run.stderr);
    let fields = &line["fields"];
    assert_eq!(line["level"], "INFO");
    for (name, value) in [
        ("new", 3),
        ("delivered", 3),
        ("deleted", 3),
        ("rejected", 0),
    ] {
        assert_eq!(fields[name], value, "{name}: {fields}");
    }
    assert!(fields["bytes"].as_u64().unwrap() > 30, "{fields}");
    assert!(fields["seconds"].as_f64().is_some(), "{fields}");
    assert!(
        fields.get("folder").is_none(),
        "POP3 has no folder: {fields}"
    );
    assert!(fields.get("error_kind").is_none(), "{fields}");
    assert!(
        fields["message"]
            .as_str()
            .unwrap()
            .starts_with("fake: 3 new, 3 delivered")
    );

    let server = FakePop3::start(mail(), Script::default());
    let text = Case::account("pop3", server.port(), PASSWORD, "10s").run();
    assert_eq!(text.code, Some(0), "{text:?}");
    let summary = text.stderr.lines().find(|l| l.contains("3 new")).unwrap();
    assert!(
        !summary.contains("delivered=") && !summary.contains("account="),
        "{summary}"
    );
}

/// A host name that does not resolve (`.invalid`, RFC 2606) exits 11, and
/// says so in the summary's `error_kind`.
#[test]
fn a_dns_failure_exits_11() {
    let case = Case::account("pop3", 110, PASSWORD, "10s")
        .set("host", "\"nosuch.invalid\"")
        .set("allow_plaintext_auth", "true");
    let run = case.run_with(&["--log-format", "json"]);
    assert_eq!(run.code, Some(11), "{run:?}");
    let fields = &summary(&run.stderr)["fields"];
    assert_eq!(fields["error_kind"], "dns", "{fields}");
    assert!(
        fields["error"].as_str().unwrap().contains("nosuch.invalid"),
        "{fields}"
    );
}
