//! Acceptance: the association limit, the ARTIM and idle timers, and a
//! graceful shutdown that finishes the store in flight. Driven with the
//! test's own upper-layer client (to hold associations open, stay silent, or
//! pause in the middle of a data set).

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::dimse::{self, Outcome};
use crate::harness::*;

/// A Verification association of the sender with the agent.
pub(crate) fn verification(port: u16) -> Outcome {
    dimse::associate(
        port,
        SENDER_AE,
        AGENT_AE,
        &[(1, dimse::VERIFICATION, &[dimse::IMPLICIT_LE])],
    )
    .expect("connecting to the agent")
}

#[test]
fn association_limit_artim_and_idle_timers() {
    let dir = tempdir();
    let mut cfg = AgentConfig::new(&dir.path().join("data"));
    cfg.ae_extra = "max_associations = 2\nartim_timeout_secs = 2\nidle_timeout_secs = 3\n".into();
    let agent = Agent::start(&cfg);

    // Two associations held open use the two slots; the third is rejected
    // transiently by the service provider: local limit exceeded (PS3.8 9.3.4:
    // result 2, source 3, reason 2).
    let Outcome::Accepted(first) = verification(cfg.port) else {
        panic!("first association refused{}", agent.log_tail());
    };
    let Outcome::Accepted(mut second) = verification(cfg.port) else {
        panic!("second association refused{}", agent.log_tail());
    };
    match verification(cfg.port) {
        Outcome::Rejected {
            result,
            source,
            reason,
        } => assert_eq!(
            (result, source, reason),
            (2, 3, 2),
            "third association: want A-ASSOCIATE-RJ transient/provider/local-limit"
        ),
        _ => panic!("a third association was not rejected{}", agent.log_tail()),
    }
    // Releasing one frees its slot.
    first.release().expect("releasing the first association");
    std::thread::sleep(Duration::from_millis(200));
    let Outcome::Accepted(third) = verification(cfg.port) else {
        panic!("no association after a slot was freed{}", agent.log_tail());
    };
    third.release().expect("releasing");

    // Idle: the second association has sent nothing since it was accepted;
    // after idle_timeout_secs (3) the agent aborts it (A-ABORT, PDU type 7)
    // or closes it.
    let waited = Instant::now();
    let next = second
        .next_pdu_type(Duration::from_secs(20))
        .unwrap_or(None);
    let idle_for = waited.elapsed();
    assert!(
        matches!(next, Some(0x07) | None),
        "idle association got PDU {next:?} instead of an abort"
    );
    assert!(
        idle_for >= Duration::from_secs(1) && idle_for < Duration::from_secs(15),
        "idle association ended after {idle_for:?}; idle_timeout_secs is 3"
    );

    // ARTIM: a TCP connection that never sends an A-ASSOCIATE-RQ is closed
    // after artim_timeout_secs (2), and meanwhile it does not hold the agent.
    let mut silent = TcpStream::connect(("127.0.0.1", cfg.port)).expect("connecting");
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let opened = Instant::now();
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf).unwrap_or(0);
    let closed_after = opened.elapsed();
    assert_eq!(n, 0, "the agent sent {n} bytes to a silent connection");
    assert!(
        closed_after >= Duration::from_millis(1500) && closed_after < Duration::from_secs(15),
        "silent connection closed after {closed_after:?}; artim_timeout_secs is 2"
    );
    // The connection is closed just before the line is written: poll.
    for needle in ["ARTIM", "too many associations", "idle timeout"] {
        let until = Instant::now() + Duration::from_secs(5);
        while !agent.log().contains(needle) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            agent.log().contains(needle),
            "no log line with {needle:?}{}",
            agent.log_tail()
        );
    }
    agent.stop();
}

#[test]
fn sigterm_finishes_the_store_in_flight() {
    let dir = tempdir();
    let src = synth(
        &dir.path().join("src"),
        &[
            "--instances-per-series",
            "1",
            "--rows",
            "1024",
            "--columns",
            "1024",
            "--seed",
            "9",
        ],
    );
    let (meta, dataset) = raw_info(&src[0]);
    let cfg = AgentConfig::new(&dir.path().join("data"));
    let agent = Agent::start(&cfg);
    let Outcome::Accepted(mut assoc) = dimse::associate(
        cfg.port,
        SENDER_AE,
        AGENT_AE,
        &[(1, dimse::CT_IMAGE_STORAGE, &[dimse::EXPLICIT_LE])],
    )
    .expect("associating") else {
        panic!("association refused{}", agent.log_tail());
    };
    // Half the data set, then SIGTERM, then a pause long enough for the
    // agent to have seen the signal, then the rest: the store must still be
    // answered Success, and be durable.
    let status = assoc
        .store_in_two_parts(
            1,
            1,
            dimse::CT_IMAGE_STORAGE,
            &meta.sop_instance_uid,
            &dataset,
            dataset.len() / 2,
            || {
                agent.terminate();
                std::thread::sleep(Duration::from_millis(700));
            },
        )
        .unwrap_or_else(|e| panic!("no C-STORE-RSP after SIGTERM: {e}{}", agent.log_tail()));
    assert_eq!(
        status, 0x0000,
        "store in flight at SIGTERM: status {status:04X}"
    );
    // No new associations while shutting down (the listener is closed).
    let late = dimse::associate(
        cfg.port,
        SENDER_AE,
        AGENT_AE,
        &[(1, dimse::VERIFICATION, &[dimse::IMPLICIT_LE])],
    );
    assert!(
        !matches!(late, Ok(Outcome::Accepted(_))),
        "a new association was accepted during shutdown"
    );
    let log_path = agent.log_path.clone();
    let config_path = agent.config_path.clone();
    let exit = agent.wait_exit(Duration::from_secs(40));
    assert!(
        exit.success(),
        "agent exit status {exit:?}: {}",
        log_tail(&log_path)
    );
    let rows = index_dump(&config_path);
    assert_eq!(rows.len(), 1, "rows: {rows:?}");
    assert_eq!(rows[0].sop_instance_uid, meta.sop_instance_uid);
    assert_eq!(rows[0].blake3, blake3_hex(&dataset));
    let stored = std::fs::read(&rows[0].path).expect("reading the spool file");
    assert_eq!(dataset_bytes(&stored), &dataset[..], "spool bytes differ");
}
