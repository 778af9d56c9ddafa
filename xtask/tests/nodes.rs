//! Multi-node training (issue 18): two `cargo xtask train` processes over loopback, one node and
//! one worker each, train the built-in job bit for bit as one process with two data-parallel
//! workers does (both sum the same two gradients), and resume from their checkpoints to the
//! same end.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs the `xtask` commands at once (stderr to `dir/log-i.txt`); each must end within two
/// minutes, or all are killed and the test fails. Returns each one's success and stderr.
fn run_all(dir: &Path, cmds: &[Vec<String>]) -> Vec<(bool, String)> {
    let mut children: Vec<(Child, std::path::PathBuf)> = cmds
        .iter()
        .enumerate()
        .map(|(i, args)| {
            let log = dir.join(format!("log-{i}-{}.txt", std::process::id()));
            let child = Command::new(env!("CARGO_BIN_EXE_xtask"))
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(File::create(&log).unwrap())
                .spawn()
                .unwrap();
            (child, log)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut status = vec![None; children.len()];
    while status.iter().any(Option::is_none) {
        for (s, (c, _)) in status.iter_mut().zip(&mut children) {
            if s.is_none() {
                *s = c.try_wait().unwrap();
            }
        }
        if Instant::now() > deadline {
            for (c, _) in &mut children {
                let _ = c.kill();
            }
            let logs: Vec<String> = children.iter().map(|(_, l)| std::fs::read_to_string(l).unwrap()).collect();
            panic!("the nodes did not finish within two minutes:\n{}", logs.join("\n---\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    status
        .into_iter()
        .zip(&children)
        .map(|(s, (_, log))| (s.unwrap().success(), std::fs::read_to_string(log).unwrap()))
        .collect()
}

fn args(common: &[&str], extra: &[String]) -> Vec<String> {
    common.iter().map(|s| s.to_string()).chain(extra.iter().cloned()).collect()
}

#[test]
fn two_processes_train_and_resume_as_one_with_two_workers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = |name: &str| dir.join(name).to_str().unwrap().to_string();
    // a constant learning rate, so a run of 4 steps resumed to 6 is a run of 6
    let common = ["train", "--data-parallel", "2", "--save-steps", "2", "--lr-scheduler-type", "constant"];
    // the reference: one process with two workers, 6 steps straight, and 4 then resumed to 6
    let one = |name: &str, steps: &str, resume: bool| {
        let mut a = args(&common, &["--max-steps".into(), steps.into(), "--output-dir".into(), out(name)]);
        if resume {
            a.push("--resume".into());
        }
        let done = run_all(dir, &[a]);
        assert!(done[0].0, "one process, two workers: {}", done[0].1);
    };
    one("straight", "6", false);
    one("one", "4", false);
    one("one", "6", true);

    let master = free_port().to_string();
    let node = |rank: usize, steps: &str, resume: bool| {
        let mut a = args(
            &common,
            &[
                "--nodes".into(),
                "2".into(),
                "--node-rank".into(),
                rank.to_string(),
                "--master-port".into(),
                master.clone(),
                "--max-steps".into(),
                steps.into(),
                "--output-dir".into(),
                out(&format!("node{rank}")),
            ],
        );
        if resume {
            a.push("--resume".into());
        }
        a
    };
    let first = run_all(dir, &[node(0, "4", false), node(1, "4", false)]);
    for (ok, log) in &first {
        assert!(ok, "a node failed: {log}");
        assert!(log.contains("2 data-parallel workers, node"), "{log}");
    }
    let model = |name: &str| std::fs::read(dir.join(name).join("model.safetensors")).unwrap();
    assert_eq!(model("node0"), model("node1"), "both nodes hold the same model");
    assert_ne!(model("node0"), model("one"), "4 steps are not 6");

    let resumed = run_all(dir, &[node(0, "6", true), node(1, "6", true)]);
    for (ok, log) in &resumed {
        assert!(ok, "a resumed node failed: {log}");
    }
    assert_eq!(model("node0"), model("node1"));
    assert_eq!(model("one"), model("straight"), "resuming changes nothing");
    assert_eq!(model("node0"), model("one"), "two nodes, resumed, end where one process with two workers does");
    let metrics = |name: &str| -> Vec<String> {
        std::fs::read_to_string(dir.join(name).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| l.split(",\"pairs_per_sec\"").next().unwrap().to_string())
            .collect()
    };
    assert_eq!(metrics("node0"), metrics("one"), "every node logs what one process does");
}

/// A rank outside the node count, and workers the nodes cannot share evenly, are errors.
#[test]
fn node_settings_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let o = tmp.path().join("o");
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["train", "--max-steps", "1", "--output-dir", o.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (ok, err) = run(&["--nodes", "2", "--node-rank", "2"]);
    assert!(!ok && err.contains("node rank 2 of 2 nodes"), "{err}");
    let (ok, err) = run(&["--nodes", "2", "--data-parallel", "3"]);
    assert!(!ok && err.contains("3 workers over 2 nodes"), "{err}");
    assert!(!o.exists(), "nothing is written");
}

/// Two nodes of two workers each sum their nodes' gradients with burn's collective and then
/// over the link: the same sums as one process with four workers, added in another order, so
/// equal within f32 rounding (the 1e-5 on the logged losses).
#[test]
fn two_nodes_of_two_workers_match_one_process_of_four() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let common = ["train", "--data-parallel", "4", "--max-steps", "6", "--logging-steps", "2"];
    let one = run_all(dir, &[args(&common, &["--output-dir".into(), out("one")])]);
    assert!(one[0].0, "{}", one[0].1);
    let master = free_port().to_string();
    let node = |rank: usize| {
        let extra = [
            "--nodes",
            "2",
            "--node-rank",
            &rank.to_string(),
            "--master-port",
            &master,
            "--output-dir",
            &out(&format!("n{rank}")),
        ];
        args(&common, &extra.map(String::from))
    };
    for (ok, log) in run_all(dir, &[node(0), node(1)]) {
        assert!(ok, "a node failed: {log}");
        assert!(log.contains("4 data-parallel workers, node"), "{log}");
    }
    let losses = |name: &str| -> Vec<f64> {
        std::fs::read_to_string(dir.join(name).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
            .collect()
    };
    let (a, b) = (losses("one"), losses("n0"));
    assert_eq!(losses("n0"), losses("n1"), "the nodes log the same bits");
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5, "one process {x}, two nodes {y}");
    }
}
