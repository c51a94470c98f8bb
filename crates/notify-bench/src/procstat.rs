//! Process accounting from /proc: resident memory (VmRSS) and CPU seconds (utime + stime) of
//! the gateway and of the generator itself, and finding the gateway's pid by its listen port.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// One reading of a process's memory and CPU.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProcSample {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// User + system CPU time, seconds.
    pub cpu_secs: f64,
}

/// Clock ticks per second for /proc/PID/stat times (`getconf CLK_TCK`, 100 when unknown).
pub fn clk_tck() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .and_then(|text| text.trim().parse::<f64>().ok())
            .filter(|ticks| *ticks > 0.0)
            .unwrap_or(100.0)
    })
}

/// Reads `/proc/{pid}/status` and `/proc/{pid}/stat` (`pid` may be `self`).
pub fn sample(pid: &str) -> Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    Ok(ProcSample {
        rss_kib,
        cpu_secs: cpu_ticks(&stat)? as f64 / clk_tck(),
    })
}

/// Open file descriptors of process `pid` (entries of `/proc/{pid}/fd`).
pub fn open_fds(pid: &str) -> Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?
        .count() as u64)
}

/// utime + stime from a stat line. Fields are counted after the `)` that closes the command
/// name, which may itself contain spaces: state is field 3, utime 14, stime 15.
fn cpu_ticks(stat: &str) -> Result<u64> {
    let after = stat
        .rfind(')')
        .map(|end| &stat[end + 1..])
        .context("malformed stat line")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |number: usize| -> Result<u64> {
        fields
            .get(number - 3)
            .and_then(|value| value.parse().ok())
            .with_context(|| format!("stat field {number} missing"))
    };
    Ok(field(14)? + field(15)?)
}

/// Finds the notify-gateway process listening on `port`: first by its command line
/// (`--listen 127.0.0.1:PORT`), then by its environment (`NOTIFY_LISTEN`), then the only
/// notify-gateway process there is.
pub fn find_gateway_pid(port: u16) -> Result<u32> {
    let needle = format!(":{port}");
    let mut gateways = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|byte| *byte == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        let Some(program) = args.first() else {
            continue;
        };
        if Path::new(program)
            .file_name()
            .and_then(|name| name.to_str())
            != Some("notify-gateway")
        {
            continue;
        }
        gateways.push((pid, args));
    }
    let listens_on = |args: &[String]| {
        args.iter().enumerate().any(|(index, arg)| {
            let value = if arg == "--listen" {
                args.get(index + 1).map(String::as_str)
            } else {
                arg.strip_prefix("--listen=")
            };
            value.is_some_and(|value| value.ends_with(&needle))
        })
    };
    if let Some((pid, _)) = gateways.iter().find(|(_, args)| listens_on(args)) {
        return Ok(*pid);
    }
    for (pid, _) in &gateways {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let listens = environ
            .split(|byte| *byte == 0)
            .filter_map(|pair| std::str::from_utf8(pair).ok())
            .filter_map(|pair| pair.strip_prefix("NOTIFY_LISTEN="))
            .any(|value| value.ends_with(&needle));
        if listens {
            return Ok(*pid);
        }
    }
    match gateways.as_slice() {
        [(pid, _)] if port == 8765 => Ok(*pid),
        [] => bail!("no notify-gateway process found; pass --gateway-pid"),
        _ => bail!("no notify-gateway process listening on port {port} found; pass --gateway-pid"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces() {
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(cpu_ticks(stat).unwrap(), 300);
    }

    #[test]
    fn reads_itself() {
        let me = sample("self").unwrap();
        assert!(me.rss_kib > 0);
        assert!(me.cpu_secs >= 0.0);
        assert!(open_fds("self").unwrap() >= 3);
    }
}
