//! Starting and stopping service processes.
//!
//! Two lifetimes: *detached* (local runs: the process outlives `eye-dev`, and a pid file lets
//! `eye-dev down` stop exactly it) and *supervised* (tests: a small shell supervisor stops the
//! service when the owning process closes the supervisor's stdin — which the kernel also does
//! when the owner exits or is killed, so no test leaves a server behind).

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A program with its arguments and the file its output goes to.
#[derive(Debug, Clone)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Environment variables set on top of the caller's.
    pub envs: Vec<(OsString, OsString)>,
    pub log_file: PathBuf,
}

impl Launch {
    fn log(&self) -> Result<(File, File)> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .with_context(|| format!("opening log file {}", self.log_file.display()))?;
        Ok((log.try_clone()?, log))
    }

    /// Starts the program in its own process group so it outlives the caller, and records its
    /// pid in `pid_file`.
    pub fn spawn_detached(&self, pid_file: &Path) -> Result<u32> {
        let (stdout, stderr) = self.log()?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        fs::write(pid_file, child.id().to_string())
            .with_context(|| format!("writing {}", pid_file.display()))?;
        Ok(child.id())
    }

    /// Starts the program under a supervisor that stops it (TERM, then KILL after 5 s) when its
    /// stdin closes, then removes `remove_after_exit` if given.
    pub fn spawn_supervised(&self, remove_after_exit: Option<&Path>) -> Result<Supervised> {
        const SUPERVISOR: &str = r#"
cleanup="$1"; shift
"$@" </dev/null &
service=$!
while read -r _; do :; done
kill -TERM "$service" 2>/dev/null
for _ in $(seq 50); do kill -0 "$service" 2>/dev/null || break; sleep 0.1; done
kill -KILL "$service" 2>/dev/null
wait "$service" 2>/dev/null
[ -n "$cleanup" ] && rm -rf -- "$cleanup"
exit 0
"#;
        let (stdout, stderr) = self.log()?;
        let cleanup = remove_after_exit.map(Path::as_os_str).unwrap_or_default();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("eye-supervisor")
            .arg(cleanup)
            .arg(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        let stdin = child.stdin.take();
        Ok(Supervised { child, stdin })
    }
}

/// A service started by [`Launch::spawn_supervised`]; stopped on [`Supervised::stop`] or drop.
#[derive(Debug)]
pub struct Supervised {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Supervised {
    /// Stops the service and waits until it has exited.
    pub fn stop(&mut self) {
        if self.stdin.is_some() {
            // A stopped (SIGSTOP) service would not act on the supervisor's TERM.
            let _ = self.signal(Signal::SIGCONT);
        }
        drop(self.stdin.take());
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` to the service itself (not its supervisor): SIGKILL for a crash, SIGSTOP
    /// and SIGCONT for a server that hangs. An error once the service has exited.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let pid = self.service_pid()?;
        kill(Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("sending {signal} to {pid}"))
    }

    /// Whether the service itself listens on `port`. A readiness probe cannot tell: another
    /// server that took the port between [`free_port`] and the service's bind answers it too.
    pub fn listens_on(&self, port: u16) -> Result<bool> {
        let pid = self.service_pid()?;
        let listening = listening_socket_inodes(port);
        let fds = fs::read_dir(format!("/proc/{pid}/fd"))
            .with_context(|| format!("reading the open files of {pid}"))?;
        Ok(fds.filter_map(Result::ok).any(|fd| {
            fs::read_link(fd.path()).is_ok_and(|target| {
                let target = target.to_string_lossy();
                listening
                    .iter()
                    .any(|inode| target == format!("socket:[{inode}]"))
            })
        }))
    }

    /// The service's pid while it runs. An exited service stays listed as its supervisor's
    /// child (a zombie) until the supervisor reaps it, and a zombie takes any signal silently.
    fn service_pid(&self) -> Result<u32> {
        let supervisor = self.child.id();
        // The supervisor's only child is the service.
        let children = fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children"))
            .with_context(|| format!("reading the children of supervisor {supervisor}"))?;
        let pid: u32 = children
            .split_whitespace()
            .next()
            .and_then(|pid| pid.parse().ok())
            .with_context(|| format!("supervisor {supervisor} runs no service"))?;
        if !is_alive(pid) {
            bail!("the service {pid} has exited (its log says why)");
        }
        Ok(pid)
    }
}

/// The inodes of the TCP sockets listening on `port`, over IPv4 and IPv6.
fn listening_socket_inodes(port: u16) -> Vec<String> {
    const LISTEN: &str = "0A";
    let port = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(table) = fs::read_to_string(table) else {
            continue;
        };
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [_, local, _, state, _, _, _, _, _, inode, ..] = fields[..] {
                if local.ends_with(&port) && state == LISTEN {
                    inodes.push(inode.to_string());
                }
            }
        }
    }
    inodes
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port on 127.0.0.1 that nothing listened on a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("binding an ephemeral port on 127.0.0.1")
}

/// What [`stop_by_pid_file`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    Stopped(u32),
    NotRunning,
}

/// The pid recorded in `pid_file` if that process is alive and its command line contains
/// `expected` (so a recycled pid is never mistaken for ours).
pub fn running_pid(pid_file: &Path, expected: &str) -> Option<u32> {
    let pid: u32 = fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    cmdline.contains(expected).then_some(pid)
}

/// Stops the process recorded in `pid_file` (TERM, then KILL after `grace`) and removes the file.
pub fn stop_by_pid_file(pid_file: &Path, expected: &str, grace: Duration) -> Result<StopOutcome> {
    let outcome = match running_pid(pid_file, expected) {
        None => StopOutcome::NotRunning,
        Some(pid) => {
            let target = Pid::from_raw(pid as i32);
            kill(target, Signal::SIGTERM).with_context(|| format!("signalling pid {pid}"))?;
            let deadline = Instant::now() + grace;
            while is_alive(pid) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(100));
            }
            if is_alive(pid) {
                kill(target, Signal::SIGKILL).with_context(|| format!("killing pid {pid}"))?;
                while is_alive(pid) {
                    thread::sleep(Duration::from_millis(50));
                }
            }
            StopOutcome::Stopped(pid)
        }
    };
    match fs::remove_file(pid_file) {
        Err(err) if err.kind() != ErrorKind::NotFound => Err(err.into()),
        _ => Ok(outcome),
    }
}

/// Alive and not a zombie: a detached child of ours that exited stays a zombie until we exit.
fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Polls `check` until it succeeds or `timeout` passes; the error names `what`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(()) => return Ok(()),
            Err(err) if Instant::now() >= deadline => {
                bail!("{what} not ready after {timeout:?}: {err:#}")
            }
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Succeeds when `GET http://{address}{path}` answers 200 (a plain HTTP/1.0 request, so readiness
/// checks need no HTTP client).
pub fn http_get_ok(address: &str, path: &str) -> Result<()> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("{path} answered {status:?}");
    }
    Ok(())
}
