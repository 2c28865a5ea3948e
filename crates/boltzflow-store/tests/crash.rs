//! Crash robustness: a writer killed with SIGKILL at random moments must leave a file that
//! opens, whose every committed draw reads back exactly, and which resumes.
//!
//! `crash_kill_resume` re-runs this test binary as a child (`crash_child`, selected by the
//! environment variable `BOLTZFLOW_STORE_CRASH_CHILD`) that commits blocks of random size in a
//! loop, kills it after a random (seeded) delay, then checks the file. More kills:
//! `BOLTZFLOW_STORE_CRASH_KILLS=50 cargo test -p boltzflow-store --test crash -- --nocapture`
//! (add `BOLTZFLOW_STORE_CRASH_H5PY=1` to also run `scripts/check_h5py.py` after every kill,
//! `BOLTZFLOW_STORE_CRASH_SEED=<u64>` to draw other kill times).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use boltzflow_store::{EnsembleWriter, Layout};
use common::{CONFIG, block, checkpoint, meta, verify};

const CHILD_ENV: &str = "BOLTZFLOW_STORE_CRASH_CHILD";
const FINISH_ENV: &str = "BOLTZFLOW_STORE_CRASH_FINISH";

fn crash_layout() -> Layout {
    Layout {
        chains: 4,
        config_shape: Some(vec![16, 16]),
        series: vec!["action".into(), "acceptance".into(), "action_evals".into()],
        vectors: vec![("two_point".into(), 16)],
        block: 16,
    }
}

/// SplitMix64: a tiny seeded generator for block sizes and kill times.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[test]
#[ignore = "child process of crash_kill_resume, which runs it"]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let path = Path::new(&path);
    let layout = crash_layout();
    let (mut writer, mut draws) = if path.exists() {
        let (writer, saved) = EnsembleWriter::resume(path, CONFIG, &layout).expect("resume");
        let draws = saved.draws as usize;
        if draws > 0 {
            assert_eq!(
                saved,
                checkpoint(&layout, draws),
                "resumed checkpoint is consistent"
            );
        }
        (writer, draws)
    } else {
        (
            EnsembleWriter::create(path, &meta(), &layout, false).expect("create"),
            0,
        )
    };
    println!("started");
    let finish = std::env::var(FINISH_ENV).is_ok();
    let mut state = draws as u64;
    loop {
        let size = 1 + (splitmix(&mut state) % 40) as usize;
        let (b, cp) = block(&layout, draws, size);
        writer.commit(&b, &cp).expect("commit");
        draws += size;
        if finish {
            return;
        }
    }
}

#[test]
fn crash_kill_resume() {
    let kills: usize = std::env::var("BOLTZFLOW_STORE_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(5);
    let with_h5py = std::env::var("BOLTZFLOW_STORE_CRASH_H5PY").is_ok();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.h5");
    let layout = crash_layout();
    let exe = std::env::current_exe().unwrap();
    let mut rng: u64 = std::env::var("BOLTZFLOW_STORE_CRASH_SEED")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(0x5eed);
    let mut committed = 0;
    let started = Instant::now();
    for kill in 0..=kills {
        let finish = kill == kills;
        let mut cmd = Command::new(&exe);
        cmd.args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        if finish {
            cmd.env(FINISH_ENV, "1");
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        assert!(
            lines
                .by_ref()
                .map_while(Result::ok)
                .any(|l| l.ends_with("started")),
            "child {kill} failed before committing"
        );
        if finish {
            assert!(child.wait().unwrap().success(), "final child failed");
        } else {
            std::thread::sleep(Duration::from_micros(splitmix(&mut rng) % 40_000));
            child.kill().unwrap();
            let status = child.wait().unwrap();
            assert!(!status.success(), "child {kill} ended on its own: {status}");
        }
        drop(lines);
        let draws = verify(&path, &layout);
        assert!(
            draws >= committed,
            "committed draws went back from {committed} to {draws}"
        );
        committed = draws;
        if with_h5py {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/check_h5py.py");
            let out = Command::new("python3")
                .arg(&script)
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "h5py: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let file = hdf5::File::with_options()
            .with_fapl(|fapl| fapl.libver_latest())
            .open_as(&path, hdf5::OpenMode::ReadSWMR)
            .unwrap();
        let extent = file.dataset("configs").unwrap().shape()[1];
        drop(file);
        eprintln!("kill {kill}: committed {draws} draws, configs extent {extent}");
    }
    assert!(committed > 0, "no draw was ever committed");
    eprintln!(
        "{kills} kills in {:.1} s, {committed} draws",
        started.elapsed().as_secs_f64()
    );
}
