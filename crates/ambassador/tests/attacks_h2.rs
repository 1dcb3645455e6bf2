//! HTTP/2 attacks on the ambassador: rapid reset, CONTINUATION flood, HPACK bomb, SETTINGS and
//! PING floods. Frames made by hand (raw bytes) or with the `h2` crate,
//! against the outbound listener (h2c, prior knowledge) and the inbound one (h2 over mTLS);
//! well-behaved clients (h2load from nghttp2-client) keep being served meanwhile.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::h2raw::*;
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_floods_are_cut_and_good_clients_keep_being_served() {
    let pki = Pki::new("test attacks CA");
    let app = start_app().await;
    let (_inbound, _remote, outbound, listen) = start_pair(&pki, app, &[]);

    // CONTINUATION flood: a header block that never ends, 1 KB at a time, 8 MB in all.
    under_attack(
        "CONTINUATION flood",
        listen,
        &outbound,
        move || async move {
            let s = h2c(listen).await;
            let mut bytes = frame(HEADERS, 0, 1, &request_block("/"));
            let mut one = Vec::new();
            literal(b"x-flood", &[b'a'; 1000], &mut one);
            for _ in 0..8000 {
                bytes.extend(frame(CONTINUATION, 0, 1, &one));
            }
            let total = bytes.len();
            let (sent, got) = flood(s, bytes, Duration::from_secs(10)).await;
            format!(
                "{sent}/{total} bytes taken, answered {:?}",
                frames_of(&got)
                    .iter()
                    .filter(|f| f.0 == 7 || f.0 == 3)
                    .collect::<Vec<_>>()
            )
        },
    )
    .await;

    // HPACK bomb: one 4 KB header put in the dynamic table, then referenced 4,000 times in one
    // small block (16 MB once decoded).
    under_attack("HPACK bomb", listen, &outbound, move || async move {
        let s = h2c(listen).await;
        let mut block = request_block("/");
        block.push(0x40);
        hpack_str(b"x-bomb", &mut block);
        hpack_str(&[b'b'; 4000], &mut block);
        block.extend(std::iter::repeat_n(0xbe_u8, 4000)); // indexed 62: the newest entry
        let bytes = frame(HEADERS, END_HEADERS | END_STREAM, 1, &block);
        let (_, got) = flood(s, bytes, Duration::from_secs(10)).await;
        format!(
            "answered {:?}",
            frames_of(&got).iter().map(|f| f.0).collect::<Vec<_>>()
        )
    })
    .await;

    // SETTINGS and PING floods: 50,000 of each, never reading the ACKs.
    under_attack(
        "SETTINGS and PING flood",
        listen,
        &outbound,
        move || async move {
            let mut s = TcpStream::connect(listen).await.unwrap();
            s.write_all(PREFACE).await.unwrap();
            let mut bytes = Vec::new();
            for i in 0..50_000u64 {
                bytes.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]));
                bytes.extend(frame(PING, 0, 0, &i.to_be_bytes()));
            }
            let total = bytes.len();
            // Not reading: the server must stop reading too rather than queue the answers.
            let mut sent = 0;
            for piece in bytes.chunks(16 * 1024) {
                match tokio::time::timeout(Duration::from_secs(3), s.write_all(piece)).await {
                    Ok(Ok(())) => sent += piece.len(),
                    _ => break,
                }
            }
            format!("{sent}/{total} bytes taken while not reading the answers")
        },
    )
    .await;

    // Rapid reset (CVE-2023-44487): HEADERS then RST_STREAM, 5,000 streams in one write.
    under_attack("rapid reset", listen, &outbound, move || async move {
        let s = h2c(listen).await;
        let mut bytes = Vec::new();
        for i in 0..5000u32 {
            let id = 1 + 2 * i;
            bytes.extend(frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                id,
                &request_block("/"),
            ));
            bytes.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        }
        let (sent, got) = flood(s, bytes, Duration::from_secs(10)).await;
        let goaways: Vec<u32> = frames_of(&got)
            .iter()
            .filter(|f| f.0 == 7)
            .map(|f| f.1)
            .collect();
        format!("{sent} bytes taken, GOAWAY codes {goaways:?}")
    })
    .await;
    assert!(
        protocol_errors(&outbound, "outbound", "goaway_enhance_your_calm") >= 1.0,
        "the rapid-reset GOAWAYs are counted"
    );
}
