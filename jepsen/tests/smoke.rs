//! CI's Jepsen smoke: four short runs against a 3-member Ballast cluster in
//! network namespaces. Any invalid verdict fails; unknown is reported.
//! Without root or namespaces it says so in one line and is skipped.

use std::path::PathBuf;
use std::process::Command;

const RUNS: [(&str, &str); 4] = [
    ("register", "partition,kill"),
    ("append", "kill,pause"),
    ("watch", "partition,compact"),
    ("set", "pause,kill"),
];

fn ballast_binary() -> Option<PathBuf> {
    // Test binaries live in target/<profile>/deps; the server next to them.
    let deps = std::env::current_exe().ok()?.parent()?.to_path_buf();
    let binary = deps.parent()?.join("ballast");
    binary.exists().then_some(binary)
}

#[test]
fn jepsen_smoke_against_ballast() {
    if let Some(reason) = ballast_jepsen::sandbox::unavailable_reason() {
        println!("SKIPPED jepsen_smoke_against_ballast: {reason}");
        return;
    }
    let Some(ballast) = ballast_binary() else {
        println!(
            "SKIPPED jepsen_smoke_against_ballast: no ballast binary built (cargo build --bin ballast)"
        );
        return;
    };
    let out = tempfile::tempdir().expect("temp dir");
    let mut invalid = Vec::new();
    for (seed, (workload, nemesis)) in RUNS.iter().enumerate() {
        let dir = out.path().join(workload);
        let status = Command::new(env!("CARGO_BIN_EXE_ballast-jepsen"))
            .args(["test", "--target", "ballast", "--workload", workload])
            .args(["--nemesis", nemesis, "--time", "40", "--recovery", "5"])
            .args(["--seed", &(seed as u64 + 1).to_string()])
            .arg("--binary")
            .arg(&ballast)
            .arg("--out")
            .arg(&dir)
            .status()
            .expect("running ballast-jepsen");
        let results = std::fs::read_to_string(dir.join("results.json")).unwrap_or_default();
        match status.code() {
            Some(0) => {}
            Some(2) => println!("{workload} with {nemesis}: unknown\n{results}"),
            code => invalid.push(format!(
                "{workload} with {nemesis}: exit {code:?}\n{results}"
            )),
        }
    }
    assert!(invalid.is_empty(), "{}", invalid.join("\n"));
}
