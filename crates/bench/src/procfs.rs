//! A process's CPU time and memory, from /proc.

use std::path::PathBuf;

/// CPU seconds (user + system) of process `pid`, from /proc/PID/stat.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let ticks =
        parse_stat_ticks(&text).ok_or_else(|| format!("{}: unexpected format", path.display()))?;
    Ok(ticks as f64 / crate::sys::clock_ticks() as f64)
}

/// utime + stime, in clock ticks, from the text of /proc/PID/stat. The
/// command name (field 2) is in parentheses and may hold spaces and
/// parentheses itself, so fields are counted from the last ')'.
fn parse_stat_ticks(text: &str) -> Option<u64> {
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    // rest starts at field 3 (state); utime and stime are fields 14, 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS and VmHWM (peak) of process `pid`, in KiB, from /proc/PID/status.
pub(crate) fn memory_kib(pid: u32) -> Result<(u64, u64), String> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_status(&text).ok_or_else(|| format!("{}: no VmRSS/VmHWM", path.display()))
}

fn parse_status(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let line = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 123 456 789";
        assert_eq!(parse_stat_ticks(line), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn status_gives_rss_and_peak() {
        let text = "Name:\tturnpike\nVmHWM:\t   15200 kB\nVmRSS:\t   15000 kB\n";
        assert_eq!(parse_status(text), Some((15000, 15200)));
        assert_eq!(parse_status("Name: x\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(cpu_seconds(me).unwrap() >= 0.0);
        let (rss, peak) = memory_kib(me).unwrap();
        assert!(rss > 0 && peak >= rss);
        assert!(cpu_seconds(u32::MAX).is_err());
    }
}
