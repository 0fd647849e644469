//! The files a program is told about on its command line, fetched as it starts.
//!
//! A linker gets its whole input on its command line: gcc's `collect2` and `ld` are
//! handed the LTO plugin, the C runtime's start files, `-L` directories and `-l`
//! names (`libgcc.a`, `libc.so`); an interpreter is handed its script. They open
//! those files one after another, each a round trip on a cold mount (gcc's link of a
//! hello world: six in a row, the last one libgcc.a's 2.2 MB chunk). Nothing in the
//! files fetched so far names them, but the arguments do.
//!
//! When the view sees a file opened for exec (the kernel's `FMODE_EXEC` flag on
//! OPEN), [`ExecWatch`] waits for the process to become that program
//! (`/proc/PID/exe` names it: the exec reads the file before it switches), reads its
//! arguments and working directory, and hands the paths they name ([`named_paths`])
//! to its caller, which predicts the ones that are regular files of the image.
//! The arguments only choose fetches: they are read bounded and resolved inside the
//! image's tree, and a process may name any file it could read anyway.

use parking_lot::Mutex;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The kernel's flag on a file opened by exec (`__FMODE_EXEC`), which FUSE passes on
/// in OPEN's flags (the exec'd program and its interpreter carry it).
pub const FMODE_EXEC: i32 = 0x20;

/// How often a waiting exec is looked at again.
const POLL: Duration = Duration::from_millis(2);
/// How long an exec is waited for: its first read may wait for a chunk of megabytes.
const WAIT_FOR_EXEC: Duration = Duration::from_secs(2);
/// Most execs waited for at once (a bound on what a busy container queues).
const MAX_PENDING: usize = 256;
/// Most file names one process is waited for under (the program, a script's
/// interpreter, the loader: each is opened for exec).
const MAX_NAMES: usize = 4;
/// Most bytes of a command line read.
const MAX_CMDLINE: u64 = 64 << 10;
/// Most arguments looked at.
const MAX_ARGS: usize = 256;
/// Most paths one command line yields.
pub const MAX_NAMED: usize = 32;
/// Most `-L` directories a library name is looked for in.
const MAX_LIB_DIRS: usize = 32;

/// The paths a command line names, in order, each as its alternatives (the first
/// that is a regular file is meant): absolute arguments, other plain arguments
/// relative to `cwd` (when known), and the linker's `-l NAME` (`libNAME.so`, then
/// `libNAME.a`, in each `-L` directory in turn; `-l:FILE` as given). Options and
/// `argv[0]` are skipped; at most [`MAX_ARGS`] arguments give at most [`MAX_NAMED`]
/// paths.
pub fn named_paths(args: &[String], cwd: Option<&str>) -> Vec<Vec<String>> {
    let args: Vec<&str> = args
        .iter()
        .skip(1)
        .take(MAX_ARGS)
        .map(String::as_str)
        .collect();
    // Every -L counts, wherever it stands (as for the linker).
    let mut dirs: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if let Some((dir, used)) = option_value(&args, i, "-L", "--library-path=") {
            if !dir.is_empty() && dirs.len() < MAX_LIB_DIRS {
                dirs.push(dir);
            }
            i += used;
            continue;
        }
        i += 1;
    }
    let mut named: Vec<Vec<String>> = Vec::new();
    let mut i = 0;
    while i < args.len() && named.len() < MAX_NAMED {
        if let Some((_, used)) = option_value(&args, i, "-L", "--library-path=") {
            i += used;
            continue;
        }
        if let Some((lib, used)) = option_value(&args, i, "-l", "--library=") {
            i += used;
            let files: Vec<String> = match lib.strip_prefix(':') {
                Some(file) => vec![file.to_string()],
                None if !lib.is_empty() => vec![format!("lib{lib}.so"), format!("lib{lib}.a")],
                None => continue,
            };
            let alternatives: Vec<String> = dirs
                .iter()
                .flat_map(|d| files.iter().map(move |f| format!("{d}/{f}")))
                .collect();
            if !alternatives.is_empty() {
                named.push(alternatives);
            }
            continue;
        }
        let arg = args[i];
        i += 1;
        if arg.is_empty() || arg.starts_with('-') {
            continue;
        }
        let path = if arg.starts_with('/') {
            arg.to_string()
        } else if let Some(cwd) = cwd {
            format!("{}/{arg}", cwd.trim_end_matches('/'))
        } else {
            continue;
        };
        if !named.iter().any(|n| n.len() == 1 && n[0] == path) {
            named.push(vec![path]);
        }
    }
    named
}

/// The value of option `short` (`-L DIR` or `-LDIR`) or `long` (`--opt=VALUE`) at
/// `args[i]`, and how many arguments it took.
fn option_value<'a>(
    args: &[&'a str],
    i: usize,
    short: &str,
    long: &str,
) -> Option<(&'a str, usize)> {
    let arg = args[i];
    if let Some(v) = arg.strip_prefix(long) {
        return Some((v, 1));
    }
    match arg.strip_prefix(short)? {
        "" => Some((args.get(i + 1).copied().unwrap_or(""), 2)),
        v => Some((v, 1)),
    }
}

/// Gets the paths a started program's command line names ([`named_paths`]).
pub type OnArgs = Box<dyn Fn(Vec<Vec<String>>) + Send>;

/// Watches processes that open a file of the view for exec, and reads their
/// arguments once they run it (one thread, started with the watch and ended when
/// it is dropped).
pub struct ExecWatch {
    tx: Mutex<mpsc::Sender<(u32, String)>>,
}

impl std::fmt::Debug for ExecWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecWatch").finish_non_exhaustive()
    }
}

/// One process waited for.
struct Pending {
    pid: u32,
    /// File names it opened for exec.
    names: Vec<String>,
    until: Instant,
}

/// What a look at a waiting process found.
enum Look {
    /// It runs the program: its arguments and working directory.
    Started(Vec<String>, Option<String>),
    /// Not yet.
    Wait,
    /// It is gone (or cannot be looked at).
    Gone,
}

impl ExecWatch {
    /// Starts the watching thread; `on_args` gets what each watched program's command
    /// line names.
    pub fn start(on_args: OnArgs) -> std::io::Result<ExecWatch> {
        let (tx, rx) = mpsc::channel::<(u32, String)>();
        std::thread::Builder::new()
            .name("skiff-exec-args".into())
            .spawn(move || watch(rx, on_args))?;
        Ok(ExecWatch { tx: Mutex::new(tx) })
    }

    /// Process `pid` opened file `name` of the view for exec.
    pub fn exec_opened(&self, pid: u32, name: &str) {
        if pid != 0 && !name.is_empty() {
            let _ = self.tx.lock().send((pid, name.to_string()));
        }
    }
}

/// The watching thread: takes new execs, looks at the waiting ones every [`POLL`].
fn watch(rx: mpsc::Receiver<(u32, String)>, on_args: OnArgs) {
    let mut pending: Vec<Pending> = Vec::new();
    loop {
        let next = if pending.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(POLL)
        };
        match next {
            Ok(first) => {
                add(&mut pending, first);
                while let Ok(more) = rx.try_recv() {
                    add(&mut pending, more);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        pending.retain(|p| match look(p) {
            Look::Started(args, cwd) => {
                let named = named_paths(&args, cwd.as_deref());
                if !named.is_empty() {
                    on_args(named);
                }
                false
            }
            Look::Wait => now < p.until,
            Look::Gone => false,
        });
    }
}

/// Notes that `pid` opened `name` for exec: a new wait, or one more name of a
/// process waited for already (the interpreter of a script, the loader).
fn add(pending: &mut Vec<Pending>, (pid, name): (u32, String)) {
    if let Some(p) = pending.iter_mut().find(|p| p.pid == pid) {
        if p.names.len() < MAX_NAMES && !p.names.contains(&name) {
            p.names.push(name);
        }
        return;
    }
    if pending.len() >= MAX_PENDING {
        pending.remove(0);
    }
    pending.push(Pending {
        pid,
        names: vec![name],
        until: Instant::now() + WAIT_FOR_EXEC,
    });
}

/// Whether process `p.pid` runs one of the files it opened for exec yet, and if so
/// its arguments (empty until the kernel has set them up) and working directory.
fn look(p: &Pending) -> Look {
    let proc_dir = Path::new("/proc").join(p.pid.to_string());
    let Ok(exe) = std::fs::read_link(proc_dir.join("exe")) else {
        return Look::Gone;
    };
    let exe = exe.to_string_lossy();
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
    let base = exe.rsplit('/').next().unwrap_or_default();
    if !p.names.iter().any(|n| n == base) {
        return Look::Wait;
    }
    let Some(args) = read_cmdline(&proc_dir.join("cmdline")) else {
        return Look::Gone;
    };
    if args.is_empty() {
        return Look::Wait;
    }
    let cwd = std::fs::read_link(proc_dir.join("cwd"))
        .ok()
        .and_then(|c| c.to_str().map(str::to_string))
        .filter(|c| c.starts_with('/'));
    Look::Started(args, cwd)
}

/// The NUL-separated arguments in `path` (at most [`MAX_CMDLINE`] bytes; a cut last
/// argument is dropped), `None` if it cannot be read.
fn read_cmdline(path: &Path) -> Option<Vec<String>> {
    use std::io::Read;
    let mut raw = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_CMDLINE)
        .read_to_end(&mut raw)
        .ok()?;
    let mut args: Vec<String> = raw
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // The piece after the last NUL: empty for a whole command line, a cut argument
    // otherwise.
    args.pop();
    Some(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn a_link_line_names_its_inputs_and_libraries() {
        let line = args(&[
            "/usr/lib/gcc/x86_64-linux-gnu/12/collect2",
            "-plugin",
            "/usr/lib/gcc/x86_64-linux-gnu/12/liblto_plugin.so",
            "-plugin-opt=-fresolution=/tmp/cc.res",
            "-o",
            "/tmp/hello",
            "/usr/lib/x86_64-linux-gnu/crti.o",
            "-L/usr/lib/gcc/x86_64-linux-gnu/12",
            "-L",
            "/usr/lib/x86_64-linux-gnu",
            "-lgcc",
            "-l",
            "c",
            "-l:libspecial.so.1",
            "--library=m",
        ]);
        let named = named_paths(&line, Some("/"));
        let gcc = "/usr/lib/gcc/x86_64-linux-gnu/12";
        let multi = "/usr/lib/x86_64-linux-gnu";
        assert_eq!(
            named,
            vec![
                vec![format!("{gcc}/liblto_plugin.so")],
                vec!["/tmp/hello".to_string()],
                vec![format!("{multi}/crti.o")],
                vec![
                    format!("{gcc}/libgcc.so"),
                    format!("{gcc}/libgcc.a"),
                    format!("{multi}/libgcc.so"),
                    format!("{multi}/libgcc.a"),
                ],
                vec![
                    format!("{gcc}/libc.so"),
                    format!("{gcc}/libc.a"),
                    format!("{multi}/libc.so"),
                    format!("{multi}/libc.a"),
                ],
                vec![
                    format!("{gcc}/libspecial.so.1"),
                    format!("{multi}/libspecial.so.1"),
                ],
                vec![
                    format!("{gcc}/libm.so"),
                    format!("{gcc}/libm.a"),
                    format!("{multi}/libm.so"),
                    format!("{multi}/libm.a"),
                ],
            ]
        );
    }

    #[test]
    fn relative_arguments_need_the_working_directory_and_options_are_skipped() {
        let line = args(&["python3", "-c", "app/main.py", "-", "--", "conf.yaml", ""]);
        assert_eq!(
            named_paths(&line, Some("/srv/")),
            vec![
                vec!["/srv/app/main.py".to_string()],
                vec!["/srv/conf.yaml".to_string()]
            ]
        );
        assert!(named_paths(&line, None).is_empty());
        // A dangling -L or -l takes nothing with it.
        assert!(named_paths(&args(&["ld", "-l"]), Some("/")).is_empty());
        assert!(named_paths(&args(&["ld", "-lc"]), Some("/")).is_empty());
    }

    #[test]
    fn what_one_command_line_yields_is_bounded() {
        let mut line = vec!["prog".to_string()];
        line.extend((0..10_000).map(|i| format!("/f{i}")));
        line.extend((0..10_000).map(|i| format!("-L/d{i}")));
        line.push("-lx".into());
        let named = named_paths(&line, None);
        assert_eq!(named.len(), MAX_NAMED);
        assert!(named.iter().all(|n| n.len() == 1));
        let mut libs = vec!["ld".to_string()];
        libs.extend((0..100).map(|i| format!("-L/d{i}")));
        libs.push("-lx".into());
        assert_eq!(named_paths(&libs, None)[0].len(), 2 * MAX_LIB_DIRS);
    }

    #[test]
    fn a_cut_command_line_loses_its_last_argument() {
        let dir = std::env::temp_dir().join(format!("skiff-cmdline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let whole = dir.join("whole");
        std::fs::write(&whole, b"ld\0/a.o\0").unwrap();
        assert_eq!(read_cmdline(&whole), Some(args(&["ld", "/a.o"])));
        let cut = dir.join("cut");
        std::fs::write(&cut, b"ld\0/a.o\0/b.").unwrap();
        assert_eq!(read_cmdline(&cut), Some(args(&["ld", "/a.o"])));
        let empty = dir.join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(read_cmdline(&empty), Some(Vec::new()));
        assert_eq!(read_cmdline(&dir.join("missing")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_watch_reads_a_started_programs_arguments() {
        // This test's own process runs the test binary: a watch under its name gets
        // this command line (argv[0] skipped, the rest as named paths).
        let (tx, rx) = mpsc::channel();
        let watch = ExecWatch::start(Box::new(move |named| {
            let _ = tx.send(named);
        }))
        .unwrap();
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_str().unwrap();
        watch.exec_opened(std::process::id(), name);
        let named = rx.recv_timeout(Duration::from_secs(5));
        let expected = named_paths(
            &std::env::args().collect::<Vec<_>>(),
            std::env::current_dir().unwrap().to_str(),
        );
        if expected.is_empty() {
            // (no argument to name: the watch ends without calling back)
            assert!(named.is_err());
        } else {
            assert_eq!(named.unwrap(), expected);
        }
        // A process that never runs the named file is given up (no callback).
        let (tx2, rx2) = mpsc::channel();
        let other = ExecWatch::start(Box::new(move |named| {
            let _ = tx2.send(named);
        }))
        .unwrap();
        other.exec_opened(std::process::id(), "not-this-program");
        assert!(rx2.recv_timeout(Duration::from_millis(100)).is_err());
    }
}
