//! Hot reload from a mounted Kubernetes ConfigMap. The kubelet never edits
//! a mounted file: it writes a new timestamped directory, points the
//! `..data` symlink at it in one rename, and the visible `rules.toml` is a
//! symlink through `..data`. This reproduces that layout and update on a
//! real filesystem and checks that the running watchers pick up both the
//! rule file and the blocklist (deploy/k8s/deployment.yaml mounts them so).

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fraudline::engine::{Engine, EngineConfig};
use fraudline::reload::rules as reload;

fn rules(version: &str) -> String {
    format!(
        "version = \"{version}\"\n[thresholds]\nreview = 40\nhold = 80\n\n\
         [[rule]]\nid = \"R_{version}\"\nwhen = \"amount >= 1\"\nscore = 10\nreason = \"r\"\n"
    )
}

/// Writes a ConfigMap volume generation `gen` and swaps `..data` to it, as
/// the kubelet's atomic writer does.
fn publish(dir: &Path, gen: u32, files: &[(&str, String)]) {
    let ts = dir.join(format!("..2026_11_24_20_00_0{gen}.{gen}"));
    std::fs::create_dir(&ts).unwrap();
    for (name, text) in files {
        std::fs::write(ts.join(name), text).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    symlink(ts.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(name), &link).unwrap();
        }
    }
}

async fn wait_until(limit: Duration, f: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_blocklist_reload_when_the_configmap_volume_is_updated() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let list1 =
        "kind,value,action,reason,source,expires_at_ms\naccount,1000000001,HOLD,mule,test,\n";
    publish(
        d,
        1,
        &[("rules.toml", rules("v1")), ("blocklist.csv", list1.into())],
    );

    let engine = Arc::new(Engine::new(EngineConfig::default()));
    let rules_path = d.join("rules.toml");
    reload::load_at_start(&engine, &rules_path).unwrap();
    let watcher = reload::spawn_watcher(engine.clone(), rules_path, Duration::from_millis(100));
    let sources = Arc::new(fraudline::reload::blocklist::Sources::new(
        engine.clone(),
        vec![d.join("blocklist.csv")],
        0,
        String::new(),
    ));
    sources.reload_files().unwrap();
    let list_watcher =
        fraudline::reload::blocklist::watch_files(sources.clone(), Duration::from_millis(100));
    assert_eq!(&*engine.rules().version, "v1");
    assert_eq!(engine.blocklist().len(), 1);
    let v1 = engine.blocklist().version();

    // The ConfigMap is updated: new rules, a list with one more entry.
    let list2 = format!("{list1}phone,+84900000002,REVIEW,scam,test,\n");
    publish(
        d,
        2,
        &[("rules.toml", rules("v2")), ("blocklist.csv", list2)],
    );
    let e = engine.clone();
    assert!(
        wait_until(Duration::from_secs(5), move || &*e.rules().version == "v2").await,
        "rules not reloaded after the ..data swap"
    );
    let e = engine.clone();
    assert!(
        wait_until(Duration::from_secs(5), move || e.blocklist().len() == 2).await,
        "blocklist not reloaded after the ..data swap"
    );
    assert!(engine.blocklist().version() > v1);

    // A bad update is refused; the active rules stay.
    publish(
        d,
        3,
        &[
            (
                "rules.toml",
                "version = \"v3\"\n[[rule]]\nid = \"X\"\nwhen = \"amount >= \"\n".into(),
            ),
            (
                "blocklist.csv",
                "kind,value,action,reason,source,expires_at_ms\n".into(),
            ),
        ],
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        &*engine.rules().version,
        "v2",
        "a bad rule file replaced good rules"
    );
    watcher.abort();
    list_watcher.abort();
}
