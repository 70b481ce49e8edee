//! Faults from outside: `convert` killed at any point, a write interrupted by a signal, a full
//! disk, a model file truncated or replaced while a process has it mapped, and `run` leaving its
//! input files untouched.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::common::{self, fixture, s};

fn pocketvl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pocketvl"))
}

fn convert_args<'a>(hf: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "convert",
        s(hf),
        "-o",
        s(out),
        "--quant",
        "q8_0",
        "--threads",
        "1",
    ]
}

/// Names in `dir` (sorted).
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn convert_killed_at_any_point_never_leaves_a_partial_output() {
    let hf = fixture("tiny-mha").join("hf");
    let reference = tempfile::tempdir().unwrap();
    let ref_out = reference.path().join("m.gguf");
    // The shortest of two runs: the first also warms the page cache.
    let mut full = Duration::MAX;
    for _ in 0..2 {
        let _ = std::fs::remove_file(&ref_out);
        let _ = std::fs::remove_file(reference.path().join("mmproj-m.gguf"));
        let start = Instant::now();
        let o = pocketvl()
            .args(convert_args(&hf, &ref_out))
            .output()
            .unwrap();
        full = full.min(start.elapsed());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let ref_lm = std::fs::read(&ref_out).unwrap();
    let ref_mm = std::fs::read(reference.path().join("mmproj-m.gguf")).unwrap();

    // Kill points spread over the whole run, jittered.
    const KILLS: u32 = 48;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (mut none, mut mmproj_only, mut complete) = (0, 0, 0);
    for i in 0..KILLS {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.gguf");
        let mm = dir.path().join("mmproj-m.gguf");
        let at = full.mul_f64((f64::from(i) + rng.gen::<f64>()) / f64::from(KILLS));
        let mut child = pocketvl()
            .args(convert_args(&hf, &out))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        let _ = child.kill(); // SIGKILL; fails only if it already exited
        child.wait().unwrap();
        match (out.exists(), mm.exists()) {
            (false, false) => none += 1,
            // The mmproj is committed first: a kill between the two renames leaves it alone,
            // complete; the file the user named never exists without its pair.
            (false, true) => {
                assert_eq!(std::fs::read(&mm).unwrap(), ref_mm, "kill {i} at {at:?}");
                mmproj_only += 1;
            }
            (true, true) => {
                assert_eq!(std::fs::read(&out).unwrap(), ref_lm, "kill {i} at {at:?}");
                assert_eq!(std::fs::read(&mm).unwrap(), ref_mm, "kill {i} at {at:?}");
                complete += 1;
            }
            (true, false) => panic!("kill {i} at {at:?}: {} without its mmproj", out.display()),
        }
        // Whatever a kill leaves is a hidden temporary, never at an output path.
        for name in listing(dir.path()) {
            assert!(
                name == "m.gguf"
                    || name == "mmproj-m.gguf"
                    || name.starts_with(".m.gguf.tmp-")
                    || name.starts_with(".mmproj-m.gguf.tmp-"),
                "kill {i}: unexpected file {name}"
            );
        }
    }
    println!(
        "{KILLS} kills over {full:?}: {none} before commit, {mmproj_only} between the renames, \
         {complete} after"
    );
    // Process start-up is part of `full`, so the machine's load decides the split; enough
    // kills must land before the commit for the test to mean anything.
    assert!(none >= 4, "too few kills landed during the conversion");
}

/// SIGINT (Ctrl-C), SIGTERM (`kill`) and SIGHUP (a closed terminal) in the middle of writing a
/// GGUF file: the process deletes its hidden temporary file and its directory of support files
/// and ends by that signal, as it did before it handled them. (SIGKILL cannot be handled: the
/// test above shows what it leaves.) The writer is `synth` of the Tiny shapes, seconds of
/// writing, so that the signal lands while the temporary file grows.
#[cfg(unix)]
#[test]
fn signals_mid_write_delete_the_temporary_file() {
    use std::os::unix::process::ExitStatusExt;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.gguf");
        // stderr to a file, read only on failure: an unread pipe could stall the child.
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = pocketvl()
            .args(["synth", "--variant", "deepseek-vl2-tiny", "--quant", "q4_0"])
            .args(["--no-vision", "--threads", "1", "-o", s(&out)])
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let started = loop {
            let names = listing(dir.path());
            if names.iter().any(|n| n.starts_with(".x.gguf.tmp-")) {
                break true;
            }
            if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if !started {
            let _ = child.kill();
            let status = child.wait().unwrap();
            let stderr = std::fs::read_to_string(log.path()).unwrap_or_default();
            panic!("synth never started writing (signal {sig}): {status:?} {stderr}");
        }
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: `kill` only sends a signal to our own child, which has not been waited for.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(sig),
            "signal {sig}: ended with {status:?}"
        );
        assert_eq!(listing(dir.path()), Vec::<String>::new(), "signal {sig}");
        // Nor its directory of support files (config, tokenizer) in the temporary directory.
        let support = format!("pocketvl-synth-{pid}-");
        let left: Vec<String> = listing(&std::env::temp_dir())
            .into_iter()
            .filter(|n| n.starts_with(&support))
            .collect();
        assert!(left.is_empty(), "signal {sig}: {left:?} left behind");
    }
}

/// A tmpfs of `kib` KiB mounted on a fresh directory, unmounted on drop; `None` (after
/// reporting the skip) where mounting is not permitted.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(kib: u32) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={kib}k"),
                "tmpfs",
                s(dir.path()),
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|st| st.success());
        if !ok {
            crate::prereq::skip("cannot mount a small tmpfs (needs root or CAP_SYS_ADMIN)");
            return None;
        }
        Some(SmallDisk { dir })
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn full_disk_gives_a_clear_error_and_no_file() {
    // The q8_0 pair of the tiny fixture is about 1 MB: 256 KiB fill up mid-tensor.
    let Some(disk) = SmallDisk::mount(256) else {
        return;
    };
    let hf = fixture("tiny-mha").join("hf");
    let out = disk.path().join("m.gguf");
    let o = pocketvl().args(convert_args(&hf, &out)).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: conversion failed; no output written: ")
            && last.ends_with("No space left on device (os error 28)"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(listing(disk.path()), Vec::<String>::new(), "{stderr}");
}

#[derive(Debug, PartialEq)]
struct Fingerprint {
    bytes: Vec<u8>,
    modified: std::time::SystemTime,
    permissions: std::fs::Permissions,
}

fn fingerprint(p: &Path) -> Fingerprint {
    let m = std::fs::metadata(p).unwrap();
    Fingerprint {
        bytes: std::fs::read(p).unwrap(),
        modified: m.modified().unwrap(),
        permissions: m.permissions(),
    }
}

#[test]
fn run_never_modifies_its_input_files() {
    let (dir, model) = common::converted("tiny-mha", "q8_0");
    let mmproj = dir.path().join("mmproj-model.gguf");
    let image = dir.path().join("giraffe.jpg");
    std::fs::copy(fixture("tiny-mha").join("images/giraffe.jpg"), &image).unwrap();
    let inputs = [model.clone(), mmproj, image.clone()];
    let before: Vec<Fingerprint> = inputs.iter().map(|p| fingerprint(p)).collect();
    let names = listing(dir.path());
    let o = pocketvl()
        .args([
            "run",
            "-m",
            s(&model),
            "--image",
            s(&image),
            "-p",
            "Describe.",
            "-n",
            "4",
        ])
        .args(["-t", "1", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after: Vec<Fingerprint> = inputs.iter().map(|p| fingerprint(p)).collect();
    assert!(before == after, "run changed an input file");
    assert_eq!(
        listing(dir.path()),
        names,
        "run created files beside its inputs"
    );
}

/// A chat process on `model` whose stderr is collected as it arrives.
struct Chat {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Chat {
    fn start(model: &Path) -> Chat {
        let mut child = pocketvl()
            .args(["run", "-m", s(model), "-n", "6", "-t", "1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        // stdout is drained so that the answer never blocks on a full pipe.
        let mut out = child.stdout.take().unwrap();
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Chat { child, stderr }
    }

    /// Waits until the `n`-th "> " prompt (the chat is idle again).
    fn wait_prompts(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.stderr.lock().unwrap().matches("> ").count() < n {
            assert!(Instant::now() < deadline, "chat stalled: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn say(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

#[test]
fn model_replaced_by_rename_while_mapped_keeps_working() {
    let (dir, model) = common::converted("tiny-mha", "q8_0");
    let mut chat = Chat::start(&model);
    chat.wait_prompts(1);
    chat.say("Hello");
    chat.wait_prompts(2);
    // Replace the model the way installers should: a new file renamed over the old name.
    let other: PathBuf = dir.path().join("other.gguf");
    std::fs::write(&other, b"not a model").unwrap();
    std::fs::rename(&other, &model).unwrap();
    chat.say("/reset");
    chat.say("Hello");
    chat.wait_prompts(4);
    chat.say("/exit");
    let status = chat.child.wait().unwrap();
    assert!(status.success(), "{}", chat.stderr());
}

#[test]
fn model_truncated_while_mapped_is_reported_not_a_bare_crash() {
    let (_dir, model) = common::converted("tiny-mha", "q8_0");
    let mut chat = Chat::start(&model);
    chat.wait_prompts(1);
    // Truncating in place takes the mapped pages away; the next read of them is SIGBUS.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&model)
        .unwrap()
        .set_len(4096)
        .unwrap();
    chat.say("Hello");
    drop(chat.child.stdin.take());
    let status = chat.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let stderr = chat.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "error: a mapped model or checkpoint file was truncated or rewritten while in use \
             (SIGBUS)"
        ),
        "{stderr}"
    );
}
