//! The `pocketvl` command line. Each subcommand lives in its own file and exposes an `Args`
//! struct (clap) and a `run(args) -> anyhow::Result<()>`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod bench;
pub mod cache_args;
pub mod convert;
pub mod devices;
pub mod expert_args;
pub mod gpu_args;
pub mod inspect;
pub mod run;
pub mod serve;
pub mod synth;
pub mod threads;
pub mod vision_args;

/// Run DeepSeek-VL2 vision-language models on CPU.
#[derive(Debug, Parser)]
#[command(name = "pocketvl", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
// Parsed once per process; boxing the larger argument structs would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Convert a Hugging Face DeepSeek-VL2 checkpoint to OUT.gguf + mmproj-OUT.gguf.
    Convert(convert::ConvertArgs),
    /// Print a GGUF file's metadata and tensor table.
    Inspect(inspect::InspectArgs),
    /// Generate from a prompt, or chat interactively.
    Run(run::RunArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (chat completions with images).
    Serve(serve::ServeArgs),
    /// Write a random-weight checkpoint in a variant's real shapes (for benchmarks and tests).
    Synth(synth::SynthArgs),
    /// Measure against a roofline from the same run (`bench convert`: read speed vs conversion).
    Bench(bench::BenchArgs),
    /// List the GPUs (ggml devices) --gpu can name (builds with `vulkan`, `metal`, `ggml-cpu`).
    Devices(devices::DevicesArgs),
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(e) = quant::kernels::max_tier_error() {
        anyhow::bail!(e);
    }
    match cli.command {
        Command::Convert(a) => convert::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Run(a) => run::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Synth(a) => synth::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Devices(a) => devices::run(a),
    }
}

/// The binary's entry point: parse, run, report errors with their causes, exit non-zero.
pub fn main() -> ExitCode {
    quiet_on_closed_pipe();
    explain_sigbus();
    remove_temp_files_on_termination();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_report(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, joined by ": ", each cause printed once.
///
/// Many of our error types (and the libraries') already embed their `#[source]` in their own
/// message (`cannot read image file x: No such file ...`), so anyhow's `{:#}`, which appends
/// every cause again, printed the same text two or three times. A cause whose text already
/// appears in what has been printed adds nothing and is left out.
pub fn error_report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if msg.is_empty() || out.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}

/// Makes a write to a closed pipe end the process quietly, as it does for other Unix tools.
///
/// The Rust runtime ignores SIGPIPE, so `pocketvl inspect model.gguf | head` used to panic in
/// `println!` ("failed printing to stdout: Broken pipe") once `head` had exited, and `run` kept
/// generating into the void. With the default disposition the kernel ends the process at the
/// first write to a pipe nobody reads, before any partial file or message could be left: every
/// printing command (inspect, run's stream, `--json`, bench, convert's summary) is covered
/// without each print site handling `BrokenPipe`. Output files are written through
/// a temporary file and renamed, so a kill here never leaves a partial file at an output path.
/// Sockets are unaffected: the standard library sends with `MSG_NOSIGNAL` on Linux, so a
/// server's closed connection stays an `io::Error`.
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: `signal` with `SIG_DFL` installs no handler code; it only restores the default
    // disposition, and runs before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Makes SIGINT, SIGTERM and SIGHUP delete the live temporary files before the process ends.
///
/// Outputs are written through hidden temporary files beside their destinations
/// (`quant::temp_file`); a writer that fails deletes its own, but a process ended by a signal
/// never runs that code, and an interrupted conversion left a hidden file of up to the model's
/// size beside its output. Here the three signals are blocked before any other thread exists
/// (every thread inherits the mask, and `std::process::Command` resets it for children), and
/// one thread waits for them: it deletes the files, then ends the process by the same signal
/// with its default disposition, so the exit status and the shell's report are what they were.
fn remove_temp_files_on_termination() {
    #[cfg(unix)]
    {
        /// The set of `sigs`.
        fn set_of(sigs: &[libc::c_int]) -> libc::sigset_t {
            // SAFETY: `sigemptyset` makes the zeroed value a valid empty set before
            // `sigaddset` adds to it; both only write the local.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                for &sig in sigs {
                    libc::sigaddset(&mut set, sig);
                }
                set
            }
        }
        let set = set_of(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
        // SAFETY: changes this thread's signal mask only; no other thread exists yet.
        if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || loop {
                let mut sig = 0;
                // SAFETY: `set` is a valid signal set and `sig` a writable int.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                quant::temp_file::remove_live();
                let one = set_of(&[sig]);
                // SAFETY: restoring the default disposition, unblocking the signal in this
                // thread and raising it there ends the process as the signal would have.
                unsafe {
                    libc::signal(sig, libc::SIG_DFL);
                    libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
                    libc::raise(sig);
                }
            });
        if spawned.is_err() {
            // No thread to take them: let the signals end the process as before.
            // SAFETY: changes this thread's signal mask only.
            unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
        }
    }
}

/// Turns SIGBUS into a clear message and exit status 1 instead of a bare "Bus error".
///
/// Models and checkpoints are read through memory maps, which is what makes loading
/// instant. If another program truncates such a file while we run, the kernel can no longer
/// back the mapped pages and the next read of them raises SIGBUS; no read can be retried and
/// no error value exists at that point, so the best the platform allows is to say what
/// happened and stop. (Replacing a file by renaming a new one over it is safe: the mapping
/// keeps the old file.)
fn explain_sigbus() {
    #[cfg(unix)]
    {
        extern "C" fn on_sigbus(_: libc::c_int) {
            const MSG: &[u8] = b"error: a mapped model or checkpoint file was truncated or \
                rewritten while in use (SIGBUS); replace files by writing a new file and \
                renaming it over the old one\n";
            // SAFETY: `write` and `_exit` are async-signal-safe; MSG is a static buffer.
            unsafe {
                libc::write(2, MSG.as_ptr().cast(), MSG.len());
                libc::_exit(1);
            }
        }
        // SAFETY: a zeroed `sigaction` is a valid "no flags, empty mask" value; the handler
        // only calls async-signal-safe functions, and this runs before any other thread.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
    }
}
