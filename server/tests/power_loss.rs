//! Power loss: a member whose data dir loses every write it had not synced
//! (`common::power_fs`) still holds every acknowledged write when it starts
//! again, after snapshots let it purge its log, with values small and large
//! (sled keeps values over about 128 KiB in separate blob files).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::power_fs::PowerLossMount;
use common::{Ballast, free_port};

const WRITES: usize = 200;
const LARGE_VALUE: usize = 200 * 1024;

fn value(i: usize) -> Vec<u8> {
    if i.is_multiple_of(4) {
        vec![(i % 251) as u8; LARGE_VALUE]
    } else {
        format!("small-{i}").into_bytes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_power_loss_after_snapshots_and_purges() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (backing, mountpoint) = (dir.path().join("backing"), dir.path().join("mnt"));
    if !Path::new("/dev/fuse").exists() {
        println!("SKIPPED acknowledged_writes_survive_power_loss: no /dev/fuse on this machine");
        return;
    }
    let mount = match PowerLossMount::mount(&backing, &mountpoint) {
        Ok(mount) => mount,
        Err(error) => {
            println!("SKIPPED acknowledged_writes_survive_power_loss: FUSE mount failed ({error})");
            return;
        }
    };
    let (client_port, peer_port) = (free_port(), free_port());
    let mut server = Ballast::start_on_with_args(
        &mountpoint.join("data"),
        client_port,
        peer_port,
        &["--snapshot-count", "20"],
    )
    .await;
    let mut client = server.etcd_client().await;
    let mut acknowledged = BTreeMap::new();
    for i in 0..WRITES {
        // Later rounds overwrite earlier keys, so compaction-free history
        // and the latest values both matter.
        let key = format!("power/{:03}", i % (WRITES / 2));
        client.put(key.clone(), value(i), None).await.expect("put");
        acknowledged.insert(key, value(i));
    }
    let snapshot = backing.join("data/member/snap/current.snap");
    assert!(
        snapshot.exists(),
        "no durable snapshot was made, so no log was purged and the test proves nothing"
    );
    println!(
        "synced to the backing directory: {} bytes",
        mount.synced_bytes()
    );

    server.kill9();
    mount.cut_power();

    let server = Ballast::start_on(&backing.join("data"), client_port, peer_port).await;
    let mut client = server.etcd_client().await;
    for (key, expected) in &acknowledged {
        let got = client.get(key.clone(), None).await.expect("get");
        let kv = got
            .kvs()
            .first()
            .unwrap_or_else(|| panic!("acknowledged key {key} lost"));
        assert!(
            kv.value() == expected.as_slice(),
            "acknowledged value of {key} lost: {} bytes, expected {}",
            kv.value().len(),
            expected.len()
        );
    }
}
