//! Issue 16: `cargo test` left a 768 MB broker JVM running for good. The
//! harness's brokers are now leased (deploy/kafka/broker.sh `lease`): each
//! test process that uses one holds a lease, and a reaper stops the broker and
//! removes its state a grace after the last holder is gone, however it went.
//!
//! The holders here are child processes (this same binary, running only
//! [`lease_holder`]) that take a lease through the harness's own
//! `start_broker`, on a real broker in a state directory of their own, and
//! then exit or are SIGKILLed. Each test starts one broker; the three run at
//! once (about 45 s on a busy 2-core machine).

mod common;

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The state directory a [`lease_holder`] child takes its lease on.
const HOLDER_STATE: &str = "FRAUDLINE_LEASE_HOLDER_STATE";

/// The reaper's grace in these tests (seconds; the default is 5).
const GRACE_S: u64 = 2;

/// How long a broker may take to go once its last holder is gone: the grace,
/// the reaper's 1 s poll, and Kafka's controlled shutdown (broker.sh stop
/// sends SIGKILL after 30 s).
const GONE_WITHIN: Duration = Duration::from_secs(45);

/// Not a test of its own: the child process the tests below run. It takes a
/// lease through the harness, prints the address, holds the lease until its
/// stdin closes and then exits normally.
#[test]
#[ignore = "the lease holder the tests in this file run as a child process"]
fn lease_holder() {
    let Ok(state) = std::env::var(HOLDER_STATE) else {
        return;
    };
    let addr = start_broker(&state);
    println!("LEASED {addr}");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// A [`lease_holder`] child that holds a lease on the broker in `state`.
struct Holder {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    addr: String,
}

impl Holder {
    fn take(state: &Path, keep: bool) -> Holder {
        let mut cmd = Command::new(std::env::current_exe().expect("test binary path"));
        cmd.args(["lease_holder", "--exact", "--ignored", "--nocapture"])
            .env(HOLDER_STATE, state)
            .env("FRAUDLINE_KAFKA_LEASE_GRACE", GRACE_S.to_string())
            .env_remove("FRAUDLINE_TEST_BROKERS")
            .env_remove("FRAUDLINE_KEEP_TEST_BROKER")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if keep {
            cmd.env("FRAUDLINE_KEEP_TEST_BROKER", "1");
        }
        let mut child = cmd.spawn().expect("spawn the lease holder");
        // Kept open until it exits: libtest's report after the lease would
        // fail on a closed pipe.
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut addr = None;
        let mut line = String::new();
        while addr.is_none() && stdout.read_line(&mut line).is_ok_and(|n| n > 0) {
            addr = line.trim().strip_prefix("LEASED ").map(str::to_string);
            line.clear();
        }
        let addr =
            addr.unwrap_or_else(|| panic!("the lease holder took no lease on {}", state.display()));
        Holder {
            child,
            _stdout: stdout,
            addr,
        }
    }

    /// Closes its stdin: it returns from its test and exits with success.
    fn exit(mut self) {
        drop(self.child.stdin.take());
        let status = self.child.wait().expect("wait for the lease holder");
        assert!(status.success(), "the lease holder failed: {status}");
    }

    fn sigkill(mut self) {
        self.child.kill().expect("SIGKILL the lease holder");
        self.child.wait().expect("reap the lease holder");
    }
}

/// A state directory of this test (unique per process, under /tmp beside the
/// others so broker.sh's port choice sees them) that is cleaned up whatever
/// the test's outcome.
struct State(PathBuf);

impl State {
    fn new(name: &str) -> State {
        State(PathBuf::from(format!(
            "/tmp/fraudline-kafka-lease-{}-{name}",
            std::process::id()
        )))
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn str(&self) -> &str {
        self.0.to_str().expect("an ASCII path")
    }

    fn lock_file(&self) -> PathBuf {
        let name = self.0.file_name().and_then(|n| n.to_str()).unwrap_or("");
        self.0.with_file_name(format!(".{name}.lock"))
    }

    /// The pid in a file of the state directory.
    fn pid(&self, file: &str) -> u32 {
        std::fs::read_to_string(self.0.join(file))
            .unwrap_or_else(|e| panic!("{}/{file}: {e}", self.0.display()))
            .trim()
            .parse()
            .expect("a pid")
    }
}

impl Drop for State {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = Command::new(repo().join("deploy/kafka/broker.sh"))
                .arg("clean")
                .env("FRAUDLINE_KAFKA_STATE", &self.0)
                .status();
        }
        let _ = std::fs::remove_file(self.lock_file());
    }
}

/// Whether `pid` is a live process (a zombie is not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.to_string()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// Waits up to `limit` for `done`; returns how long it took, or None.
fn within(limit: Duration, done: impl Fn() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    done().then(|| start.elapsed())
}

/// Longer than the grace plus the reaper's poll: a broker that should stay
/// has had every chance to be stopped by then.
fn past_the_grace() {
    std::thread::sleep(Duration::from_secs(GRACE_S + 4));
}

#[test]
fn the_broker_stays_while_a_holder_lives_and_goes_with_the_last_even_a_killed_one() {
    let state = State::new("last");
    let a = Holder::take(state.path(), false);
    let b = Holder::take(state.path(), false);
    assert_eq!(a.addr, b.addr, "the second holder reuses the broker");
    let broker = state.pid("pid");
    let reaper = state.pid("reaper.pid");
    assert!(alive(broker) && alive(reaper));

    a.exit();
    past_the_grace();
    assert!(
        alive(broker),
        "the broker was stopped while another process held a lease"
    );
    assert!(state.path().join("data").exists());

    b.sigkill();
    let gone = within(GONE_WITHIN, || !alive(broker) && !state.path().exists());
    assert!(
        gone.is_some(),
        "{GONE_WITHIN:?} after its last holder was SIGKILLed: broker alive {}, state {} {}",
        alive(broker),
        state.path().display(),
        if state.path().exists() {
            "still there"
        } else {
            "removed"
        }
    );
    eprintln!(
        "broker stopped and state removed {:?} after the last holder died",
        gone.unwrap_or_default()
    );
    assert!(
        within(Duration::from_secs(5), || !alive(reaper)).is_some(),
        "the reaper exits with its broker"
    );
    assert!(!state.lock_file().exists(), "the lock file goes too");
}

#[test]
fn with_keep_the_broker_is_stopped_and_its_data_kept() {
    let state = State::new("keep");
    let holder = Holder::take(state.path(), true);
    let broker = state.pid("pid");
    let reaper = state.pid("reaper.pid");
    assert!(alive(broker) && alive(reaper));
    holder.exit();
    // The reaper stops the broker, then decides on the data, then exits.
    assert!(
        within(GONE_WITHIN, || !alive(broker) && !alive(reaper)).is_some(),
        "{GONE_WITHIN:?} after its holder exited: broker alive {}, reaper alive {}",
        alive(broker),
        alive(reaper)
    );
    let log = state.path().join("logs/server.log");
    assert!(
        state.path().join("data").is_dir() && log.is_file(),
        "FRAUDLINE_KEEP_TEST_BROKER=1 keeps the data and logs in {}",
        state.path().display()
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("Shutdown completed"),
        "the broker was stopped cleanly (SIGTERM first); server.log ends:\n{}",
        text.lines().rev().take(10).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn a_broker_started_by_hand_is_used_but_never_stopped() {
    let state = State::new("hand");
    let addr = broker_cmd(state.str(), "start");
    let broker = state.pid("pid");
    let holder = Holder::take(state.path(), false);
    assert_eq!(holder.addr, addr, "the harness uses the running broker");
    holder.exit();
    past_the_grace();
    assert!(
        alive(broker),
        "the harness stopped a broker it had not started"
    );
    assert!(
        !state.path().join("leases").exists() && !state.path().join("reaper.pid").exists(),
        "no lease and no reaper on a broker the harness did not start"
    );
    // State's drop stops it (broker.sh clean).
}
