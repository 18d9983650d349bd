//! `tally bench` against a real Tally served in-process over SQLite, through its HTTP API only.

use std::path::PathBuf;

use clap::Parser;
use tally_loadgen::mix::{Intake, Payment};
use tally_loadgen::{BenchArgs, Report, run};
use tally_testkit::{Engine, TestApp, spawn_app};

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn bench_args(app: &TestApp, flags: &[&str]) -> BenchArgs {
    let url = format!("http://{}", app.address);
    let argv = ["bench", "--url", &url, "--api-key", &app.key, "--quiet"];
    Cli::try_parse_from(argv.iter().chain(flags))
        .expect("valid flags")
        .bench
}

fn json_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tally-bench-{name}-{}.json", std::process::id()))
}

/// Proves that an open-loop run of 300 orders with re-sends, concurrent duplicates and
/// declines gets every order created exactly once, every replay right, and every order
/// settled to the status its price steered to, with each histogram holding one value per
/// order or replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_orders_settle_without_a_mismatch() {
    let app = spawn_app(Engine::Sqlite).await;
    let json = json_path("open");
    let args = bench_args(
        &app,
        &[
            "--rate",
            "60",
            "--orders",
            "300",
            "--concurrency",
            "16",
            "--retry-share",
            "0.1",
            "--duplicate-share",
            "0.05",
            "--decline-share",
            "0.03",
            "--settle-sample",
            "0.1",
            "--seed",
            "7",
            "--json",
            json.to_str().expect("a UTF-8 path"),
        ],
    );
    let settings = args.settings().expect("settings");
    let mix = settings.mix();
    let plans: Vec<_> = (0..300).map(|i| mix.plan(i)).collect();
    let retries = plans.iter().filter(|p| p.intake == Intake::Retry).count() as u64;
    let copies_extra: u64 = plans
        .iter()
        .map(|p| match p.intake {
            Intake::Duplicate { copies } => copies - 1,
            Intake::Single | Intake::Retry => 0,
        })
        .sum();
    let declines = plans
        .iter()
        .filter(|p| p.payment == Payment::Decline)
        .count() as u64;
    assert!(
        retries > 0 && copies_extra > 0 && declines > 0,
        "the mix exercises every path"
    );

    let report = run(&args).await.expect("the run");
    println!("{report}");

    assert_eq!(report.errors.total, 0, "{:#?}", report.errors);
    assert!(report.errors.mismatches.is_empty());
    let intake = &report.intake;
    assert_eq!(intake.orders_sent, 300);
    assert_eq!(intake.accepted, 300);
    assert_eq!(intake.accepted_measured, 300);
    assert_eq!(intake.latency_ms.count, 300);
    assert_eq!(intake.retry_orders, retries);
    assert_eq!(intake.duplicate_copies_extra, copies_extra);
    assert_eq!(intake.replay_latency_ms.count, retries + copies_extra);
    assert!(intake.requests_sent >= 300 + retries + copies_extra);
    assert!(intake.latency_ms.p50 > 0.0 && intake.latency_ms.max >= intake.latency_ms.p99);
    assert!(intake.orders_per_s > 0.0);
    assert_eq!(intake.clock_skew_suspect, 0);

    let settle = &report.settle;
    assert_eq!(settle.tracked, 300);
    assert_eq!(
        settle.settled, 300,
        "unsettled: {:?}",
        settle.unsettled_examples
    );
    assert_eq!(settle.unsettled, 0);
    assert!(settle.unexpected_outcomes.is_empty(), "{settle:#?}");
    assert_eq!(
        settle.by_status.get("cancelled").copied().unwrap_or(0),
        declines
    );
    assert_eq!(settle.by_status["completed"], 300 - declines);
    assert_eq!(settle.e2e_ms.count, 300);
    assert!(settle.e2e_ms.p50 >= intake.latency_ms.p50);
    assert!(settle.e2e_orders_per_s > 0.0);
    assert!(report.lag.scrapes_ok > 0);
    assert!(report.is_clean());

    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).expect("JSON");
    assert_eq!(written["settle"]["settled"], 300);
    assert_eq!(written["intake"]["latency_ms"]["count"], 300);
    let _ = std::fs::remove_file(&json);
    app.stop().await;
}

/// Proves that the closed loop leaves warm-up orders out of every figure while still
/// placing and settling them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warm_up_orders_settle_but_do_not_count() {
    let app = spawn_app(Engine::Sqlite).await;
    let args = bench_args(
        &app,
        &["--orders", "40", "--warmup", "1s", "--concurrency", "4"],
    );
    let report: Report = run(&args).await.expect("the run");
    println!("{report}");

    assert_eq!(report.run.mode, "closed");
    assert_eq!(report.errors.total, 0, "{:#?}", report.errors);
    let intake = &report.intake;
    assert_eq!(intake.accepted_measured, 40);
    assert!(intake.accepted > 40, "the warm-up second placed orders too");
    assert_eq!(intake.latency_ms.count, 40);
    assert_eq!(report.settle.settled, intake.accepted);
    assert_eq!(report.settle.e2e_ms.count, 40);
    assert_eq!(report.settle.unsettled, 0);
    app.stop().await;
}

/// Proves that a catalog larger than one product may hold is set up as several products, and
/// that orders spread over it all complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_catalog_of_many_products_takes_orders_on_every_one() {
    let app = spawn_app(Engine::Sqlite).await;
    let args = bench_args(
        &app,
        &["--orders", "60", "--skus", "150", "--concurrency", "4"],
    );
    let report: Report = run(&args).await.expect("the run");
    println!("{report}");

    assert_eq!(report.run.skus, 150);
    assert_eq!(report.errors.total, 0, "{:#?}", report.errors);
    assert_eq!(report.settle.settled, 60);
    assert_eq!(report.settle.by_status.get("completed"), Some(&60));
    app.stop().await;
}

/// Proves that orders the channel cancels as soon as they are created, racing the saga's
/// payment calls against a sandbox that fails some of them, each end cancelled (or completed
/// when the cancellation came too late), and `tally check` with the sandbox's effects finds no
/// authorization left open and every capture refunded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_cancelled_at_once_leave_nothing_authorized() {
    let sandbox = tally_sandbox::SandboxConfig {
        error_rate: 0.05,
        error_after_effect_rate: 0.1,
        seed: 5,
        ..tally_sandbox::SandboxConfig::default()
    };
    let app =
        tally_testkit::spawn_app_with(Engine::Sqlite, tally_testkit::api_config(), sandbox).await;
    let args = bench_args(
        &app,
        &[
            "--rate",
            "40",
            "--orders",
            "80",
            "--concurrency",
            "8",
            "--cancel-share",
            "0.5",
            "--seed",
            "3",
        ],
    );
    let mix = args.settings().expect("settings").mix();
    let cancels = (0..80).filter(|i| mix.plan(*i).cancel).count() as u64;
    assert!(cancels > 20, "the mix cancels orders: {cancels}");

    let report = run(&args).await.expect("the run");
    println!("{report}");
    assert_eq!(report.errors.total, 0, "{:#?}", report.errors);
    let intake = &report.intake;
    assert_eq!(intake.cancels_accepted + intake.cancels_too_late, cancels);
    assert!(intake.cancels_accepted > 0, "{intake:#?}");
    let settle = &report.settle;
    assert_eq!(settle.settled, 80, "{settle:#?}");
    assert!(settle.unexpected_outcomes.is_empty(), "{settle:#?}");
    assert!(settle.by_status.get("cancelled").copied().unwrap_or(0) > 0);

    tally_testkit::saga::wait_until_consumers_caught_up(app.store()).await;
    let effects = app.partner_effects();
    let check = tally::checks::all(app.store().as_ref(), Some(&effects))
        .await
        .expect("check");
    assert!(check.is_clean(), "{check}\n{}", check.violations.join("\n"));
    app.stop().await;
}
