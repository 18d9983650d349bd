//! The binary's start-up refusals: there is no built-in webhook secret.

use std::process::Command;

fn tally(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env_remove("TALLY_CARRIER_WEBHOOK_SECRET")
        .env_remove("TALLY_PAYMENT_URL")
        .env_remove("TALLY_CARRIER_URL")
        .env_remove("TALLY_NOTIFICATION_URL")
        .env("TALLY_LOG", "error")
        .output()
        .expect("run tally")
}

/// With partner URLs, a process serving the API needs the secret it verifies carrier webhooks
/// with, and says which flag gives it.
#[test]
fn serving_real_partners_without_a_webhook_secret_is_refused_naming_the_flag() {
    let dir = tempfile::tempdir().expect("a directory");
    let url = format!("sqlite://{}", dir.path().join("tally.db").display());
    let partner = "http://127.0.0.1:9";
    let output = tally(&[
        "--database-url",
        &url,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--payment-url",
        partner,
        "--carrier-url",
        partner,
        "--notification-url",
        partner,
    ]);
    assert!(!output.status.success(), "serve started without a secret");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--carrier-webhook-secret")
            && stderr.contains("TALLY_CARRIER_WEBHOOK_SECRET"),
        "{stderr}"
    );
}

/// The separate sandbox signs with the secret the server verifies with: it has no default.
#[test]
fn the_sandbox_needs_the_servers_webhook_secret() {
    let output = tally(&["sandbox", "--listen", "127.0.0.1:0"]);
    assert!(
        !output.status.success(),
        "the sandbox started without a secret"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--carrier-webhook-secret"), "{stderr}");
}
