//! The processes of a chaos run: each a real OS process of the `tally` binary, started with
//! fixed arguments, its standard error appended to a log file of its own, killed with SIGKILL
//! and started again with the same arguments. Dropping the [`Fleet`] kills every process still
//! running, so that no error path leaves one behind.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::{Child, Command};

/// How often a starting process is asked whether it is ready.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long one readiness probe may take: the process answers from memory and its store.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What kind of process: which ones may be killed, and which serve `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The partner sandbox: never killed (it holds the record of every effect in memory).
    Sandbox,
    /// `tally serve` with every role.
    All,
    Api,
    Relay,
    Worker,
}

/// How to start one process, and how to tell that it is ready.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub kind: Kind,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Its base URL, such as `http://127.0.0.1:8080`.
    pub base_url: String,
    /// The path answering 200 once the process is ready.
    pub ready_path: &'static str,
}

#[derive(Debug)]
struct Process {
    spec: Spec,
    /// `None` while the process is down (killed, or exited and reaped).
    child: Option<Child>,
    log: PathBuf,
}

/// Every process of a run, by index in start order.
#[derive(Debug)]
pub struct Fleet {
    exe: PathBuf,
    dir: PathBuf,
    processes: Vec<Process>,
    http: reqwest::Client,
}

impl Fleet {
    /// A fleet of `exe` processes whose logs go to `dir`.
    pub fn new(exe: &Path, dir: &Path) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(READY_PROBE_TIMEOUT)
            .build()
            .context("build the HTTP client")?;
        Ok(Self {
            exe: exe.to_owned(),
            dir: dir.to_owned(),
            processes: Vec::new(),
            http,
        })
    }

    /// Starts a process and returns its index.
    pub fn start(&mut self, spec: Spec) -> anyhow::Result<usize> {
        let log = self.dir.join(format!("{}.log", spec.name));
        let child = spawn(&self.exe, &spec, &log)?;
        self.processes.push(Process {
            spec,
            child: Some(child),
            log,
        });
        Ok(self.processes.len() - 1)
    }

    pub fn spec(&self, index: usize) -> &Spec {
        &self.processes[index].spec
    }

    /// Where process `index` writes its log.
    pub fn log(&self, index: usize) -> &Path {
        &self.processes[index].log
    }

    /// The indexes of the processes of `kind`.
    pub fn of_kind(&self, kind: Kind) -> Vec<usize> {
        (0..self.processes.len())
            .filter(|&index| self.processes[index].spec.kind == kind)
            .collect()
    }

    /// The base URLs of every Tally process (not the sandbox): where `/metrics` is served.
    pub fn tally_urls(&self) -> Vec<String> {
        self.processes
            .iter()
            .filter(|process| process.spec.kind != Kind::Sandbox)
            .map(|process| process.spec.base_url.clone())
            .collect()
    }

    /// Waits until process `index` answers 200 at its ready path; fails if it exits first or
    /// `timeout` passes.
    pub async fn wait_ready(&mut self, index: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let url = {
            let spec = &self.processes[index].spec;
            format!("{}{}", spec.base_url, spec.ready_path)
        };
        while Instant::now() < deadline {
            let probe = self.http.get(&url).send().await;
            if probe.is_ok_and(|response| response.status().is_success()) {
                return Ok(());
            }
            if let Some(status) = self.exited(index)? {
                anyhow::bail!(
                    "{} exited with {status} before it was ready; see {}",
                    self.processes[index].spec.name,
                    self.processes[index].log.display()
                );
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
        anyhow::bail!(
            "{} was not ready within {timeout:?}; see {}",
            self.processes[index].spec.name,
            self.processes[index].log.display()
        )
    }

    /// The exit status of process `index` if it exited since it was started (reaping it, so
    /// that it counts as down from then on); `None` while it runs or is down already.
    pub fn exited(&mut self, index: usize) -> anyhow::Result<Option<ExitStatus>> {
        let process = &mut self.processes[index];
        let Some(child) = process.child.as_mut() else {
            return Ok(None);
        };
        let status = child
            .try_wait()
            .with_context(|| format!("ask whether {} still runs", process.spec.name))?;
        if status.is_some() {
            process.child = None;
        }
        Ok(status)
    }

    /// The indexes of every process that exited by itself since the last call, with how.
    pub fn reap_exited(&mut self) -> anyhow::Result<Vec<(usize, ExitStatus)>> {
        let mut exited = Vec::new();
        for index in 0..self.processes.len() {
            if let Some(status) = self.exited(index)? {
                exited.push((index, status));
            }
        }
        Ok(exited)
    }

    /// SIGKILL: no shutdown, no final commit, no lease released. Waits until it is gone.
    pub async fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        let process = &mut self.processes[index];
        if let Some(mut child) = process.child.take() {
            child
                .kill()
                .await
                .with_context(|| format!("kill {}", process.spec.name))?;
        }
        Ok(())
    }

    /// Starts process `index` again with the arguments it was first started with.
    pub fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        let process = &mut self.processes[index];
        anyhow::ensure!(
            process.child.is_none(),
            "{} is still running",
            process.spec.name
        );
        process.child = Some(spawn(&self.exe, &process.spec, &process.log)?);
        Ok(())
    }

    /// Kills every process still running and waits for each to be gone.
    pub async fn stop(&mut self) {
        for index in 0..self.processes.len() {
            if let Err(error) = self.kill(index).await {
                eprintln!("chaos: {error:#}");
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for process in &mut self.processes {
            if let Some(child) = process.child.as_mut() {
                // Best effort on every exit path; `kill_on_drop` is the second line.
                let _ = child.start_kill();
                let _ = child.try_wait();
            }
        }
    }
}

fn spawn(exe: &Path, spec: &Spec, log: &Path) -> anyhow::Result<Child> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open the log {}", log.display()))?;
    let mut command = Command::new(exe);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .kill_on_drop(true);
    command
        .spawn()
        .with_context(|| format!("start {} ({})", spec.name, exe.display()))
}
