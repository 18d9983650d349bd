//! `tally bench --transient-retries` through a proxy that cuts connections after the server
//! answered, so that the channel never hears of orders the server placed.

use std::net::SocketAddr;

use clap::Parser;
use tally_loadgen::mix::SplitMix64;
use tally_loadgen::{BenchArgs, run};
use tally_testkit::{Engine, spawn_app};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

/// The most answers a proxied connection relays before it is cut.
const ANSWERS_BEFORE_CUT_MAX: u64 = 8;

/// Relays one connection to `upstream` and cuts both sides instead of relaying the server's
/// `cut_at`th read: the request was applied, its answer is lost.
async fn relay(client: TcpStream, upstream: SocketAddr, cut_at: u64) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = tokio::io::copy(&mut client_read, &mut server_write);
    let down = async {
        let mut buffer = vec![0_u8; 64 * 1024];
        for _ in 1..cut_at {
            match server_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => {
                    if client_write.write_all(&buffer[..read]).await.is_err() {
                        return;
                    }
                }
            }
        }
        // The answer arrives and is dropped with the connection.
        let _ = server_read.read(&mut buffer).await;
    };
    tokio::select! {
        _ = up => {}
        () = down => {}
    }
}

/// A proxy to `upstream` that cuts each connection after 1 to [`ANSWERS_BEFORE_CUT_MAX`]
/// answers, drawn from `seed`.
async fn flaky_proxy(upstream: SocketAddr, seed: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let mut rng = SplitMix64::new(seed);
        while let Ok((client, _)) = listener.accept().await {
            let cut_at = rng.next_in(1, ANSWERS_BEFORE_CUT_MAX);
            tokio::spawn(relay(client, upstream, cut_at));
        }
    });
    address
}

/// Proves that a channel retrying transient failures with the same key and body places each
/// order exactly once although many answers are lost after the server applied the request:
/// every lost answer is retried and answered by a replay, and the store holds one order per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_answers_are_retried_into_exactly_one_order_each() {
    let app = spawn_app(Engine::Sqlite).await;
    let proxy = flaky_proxy(app.address, 5).await;
    let url = format!("http://{proxy}");
    let flags = [
        "bench",
        "--url",
        &url,
        "--api-key",
        &app.key,
        "--quiet",
        "--rate",
        "100",
        "--orders",
        "200",
        "--concurrency",
        "16",
        "--retry-share",
        "0.1",
        "--duplicate-share",
        "0.1",
        "--transient-retries",
        "20",
        "--seed",
        "5",
    ];
    let args = Cli::try_parse_from(flags).expect("valid flags").bench;
    let report = run(&args).await.expect("the run");
    println!("{report}");

    assert!(report.is_clean(), "{:#?}", report.errors);
    let intake = &report.intake;
    assert!(intake.transient_retries > 10, "the proxy cut many answers");
    assert!(intake.orders_retried > 0 && intake.orders_retried <= intake.transient_retries);
    assert_eq!(intake.accepted, 200);
    assert_eq!(report.settle.settled, 200);
    let stored: i64 = tally_store::Store::order_status_counts(app.store().as_ref(), app.tenant)
        .await
        .expect("order counts")
        .into_iter()
        .map(|(_, count)| count)
        .sum();
    assert_eq!(stored, 200, "one order per key, none lost and none doubled");
    app.stop().await;
}
