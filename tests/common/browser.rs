//! Headless Chromium for the tests that drive it (`tests/browser.rs`,
//! `tests/report_readers.rs`): Debian's `chromium`, driven by npm's
//! `playwright-core` through a node script in `tests/browser/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::{Finished, in_target_dirs, is_executable, on_path, run_with_limit};

/// Where Debian's package puts Chromium, and what the scripts drive.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// What drives the browser: node, the npm prefix holding playwright-core,
/// and Chromium.
pub struct Browser {
    pub node: PathBuf,
    pub modules: PathBuf,
    pub chromium: PathBuf,
}

impl Browser {
    /// What scripts/test-deps installs, or what is missing.
    pub fn find() -> Result<Self, String> {
        let node = on_path("node", "nodejs")?;
        let chromium = PathBuf::from(CHROMIUM);
        if !is_executable(&chromium) {
            return Err(format!("no {CHROMIUM} (Debian package chromium)"));
        }
        let candidates = in_target_dirs("browser-node");
        let modules = candidates
            .iter()
            .find(|prefix| {
                prefix
                    .join("node_modules/playwright-core/package.json")
                    .is_file()
            })
            .cloned()
            .ok_or_else(|| {
                let tried: Vec<String> =
                    candidates.iter().map(|p| p.display().to_string()).collect();
                format!("no playwright-core under {}", tried.join(" or "))
            })?;
        Ok(Self {
            node,
            modules,
            chromium,
        })
    }
}

/// Runs `cmd`, stopped if it runs longer than `limit`: first with
/// SIGTERM, on which Playwright closes the browser it launched; then any
/// Chromium process still using `profile` is killed by its id.
pub fn run_bounded(cmd: &mut Command, limit: Duration, profile: &Path) -> Finished {
    run_with_limit(cmd, limit, |child| {
        stop(child);
        kill_browsers_using(profile);
    })
}

/// SIGTERM, a few seconds' grace, then SIGKILL.
fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills, by process id, every process whose command line names `profile`,
/// the user data directory a test made for its browser and no other.
pub fn kill_browsers_using(profile: &Path) {
    let needle = format!("--user-data-dir={}", profile.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .split(|&b| b == 0)
            .any(|arg| arg == needle.as_bytes())
        {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}
