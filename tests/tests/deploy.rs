//! The files in `deploy/` are what an operator runs as is, so each is checked by the tool that
//! will read it, when that tool is installed here (a test whose tool is absent says it skipped):
//! the systemd unit by `systemd-analyze`, the Containerfile by `podman build`, the Kubernetes
//! manifests by parsing them and asking a real gateway for the probe paths they name.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use notify_tests::{binary, free_port, http_client, wait_until, Gateway, RedisServer};
use serde::Deserialize;
use serde_json::Value;

/// Highest `systemd-analyze security` exposure the unit may have (0 safest, 10 worst). The
/// hardened unit scores 1.2; the unit before hardening scored 8.3.
const MAX_UNIT_EXPOSURE: f64 = 2.0;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_owned()
}

/// A fresh scratch directory for one test.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("removing the previous scratch directory");
    }
    std::fs::create_dir_all(&dir).expect("creating the scratch directory");
    dir
}

/// The path of `tool` on `PATH`, or `None` after saying the test skipped.
fn installed(tool: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(tool))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        println!("SKIPPED {test}: {tool} is not installed");
        eprintln!("SKIPPED {test}: {tool} is not installed");
    }
    found
}

fn run(command: &mut Command) -> (bool, String) {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("running {command:?}: {error}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

// ---- systemd --------------------------------------------------------------------------------

/// Writes `unit` as `notify-gateway.service` in `dir`, its `ExecStart` pointed at the gateway
/// binary built for the tests (verify checks that the program exists).
fn write_unit(dir: &Path, unit: &str) -> PathBuf {
    let gateway = binary("notify-gateway");
    let unit = unit.replace(
        "ExecStart=/usr/local/bin/notify-gateway",
        &format!("ExecStart={}", gateway.display()),
    );
    let path = dir.join("notify-gateway.service");
    std::fs::write(&path, unit).expect("writing the unit copy");
    path
}

/// The overall exposure `systemd-analyze security --offline=yes` gives a unit file.
fn exposure(systemd_analyze: &Path, unit: &Path) -> f64 {
    let (_, text) = run(Command::new(systemd_analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit));
    let line = text
        .lines()
        .find(|line| line.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    line.rsplit(':')
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("no score in {line:?}"))
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let Some(systemd_analyze) =
        installed("systemd-analyze", "systemd_unit_verifies_and_is_hardened")
    else {
        return;
    };
    let unit = std::fs::read_to_string(workspace_root().join("deploy/notify-gateway.service"))
        .expect("deploy/notify-gateway.service");

    let hardened_dir = scratch_dir("unit-hardened");
    let hardened = write_unit(&hardened_dir, &unit);
    let (verified, text) = run(Command::new(&systemd_analyze)
        .args(["verify", "--man=no"])
        .arg(&hardened));
    assert!(
        verified && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    let score = exposure(&systemd_analyze, &hardened);
    assert!(
        score <= MAX_UNIT_EXPOSURE,
        "the unit's exposure is {score}, above {MAX_UNIT_EXPOSURE}"
    );

    // Control: the same unit without its hardening lines scores as exposed, so the figure
    // above is read from a real rating.
    let bare: String = unit
        .lines()
        .filter(|line| {
            line.starts_with('[')
                || ["ExecStart=", "Description=", "WantedBy="]
                    .iter()
                    .any(|key| line.starts_with(key))
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let bare_dir = scratch_dir("unit-bare");
    let bare_score = exposure(&systemd_analyze, &write_unit(&bare_dir, &bare));
    assert!(
        bare_score > 8.0,
        "an unhardened unit scored {bare_score}: the rating is not being read"
    );
    println!("systemd-analyze security: hardened {score}, unhardened {bare_score}");

    // TimeoutStopSec must leave the drain its full time.
    let stop_timeout = unit_value(&unit, "TimeoutStopSec").trim_end_matches('s');
    let stop_timeout: u64 = stop_timeout.parse().expect("TimeoutStopSec in seconds");
    assert!(
        stop_timeout > DEFAULT_DRAIN_TIMEOUT_SECS,
        "TimeoutStopSec={stop_timeout} does not exceed the drain timeout"
    );
}

/// The gateway's default `--drain-timeout`, in seconds (README's configuration table).
const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 10;

/// The value of the one `Key=value` line of a unit (or ini-like file).
fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    let mut values = unit
        .lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()));
    let value = values.next().unwrap_or_else(|| panic!("no {key}= line"));
    assert!(values.next().is_none(), "more than one {key}= line");
    value
}

// ---- container image ----------------------------------------------------------------------

/// The uid and gid the image runs as (deploy/Containerfile's USER).
const IMAGE_USER: &str = "10001:10001";

/// Stages the image's root file system with deploy/container/stage-rootfs.sh. The gateway is
/// the binary the tests built (target/<profile>/notify-gateway): the test checks packaging,
/// not speed, and a release build would cost CI minutes.
fn stage_rootfs(context: &Path) -> PathBuf {
    let (staged, text) = run(Command::new("bash")
        .arg(workspace_root().join("deploy/container/stage-rootfs.sh"))
        .arg(binary("notify-gateway"))
        .arg(context));
    assert!(staged, "stage-rootfs.sh failed:\n{text}");
    context.join("rootfs")
}

#[tokio::test]
async fn staged_root_file_system_runs_the_gateway_as_its_user() {
    let test = "staged_root_file_system_runs_the_gateway_as_its_user";
    let Some(chroot) = installed("chroot", test) else {
        return;
    };
    // chroot needs root (CI runs as root; elsewhere this part is skipped).
    let (_, uid) = run(Command::new("id").arg("-u"));
    if uid.trim() != "0" {
        println!("SKIPPED {test}: chroot needs root");
        return;
    }
    let rootfs = stage_rootfs(&scratch_dir("container-rootfs"));

    // Only what was staged is visible: if a library were missing the loader would fail here.
    let port = free_port();
    let mut gateway = Command::new(chroot)
        .arg(format!("--userspec={IMAGE_USER}"))
        .arg(&rootfs)
        .arg("/usr/local/bin/notify-gateway")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the gateway in the staged root");
    let http = http_client();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let healthy = wait_until(Duration::from_secs(10), || async {
        matches!(http.get(&url).send().await, Ok(response) if response.status() == 200)
    })
    .await;
    let exited = gateway.try_wait().expect("polling the gateway");
    gateway.kill().ok();
    let output = gateway.wait_with_output().expect("reaping the gateway");
    assert!(
        healthy,
        "the gateway in the staged root never answered /healthz (exit: {exited:?}); stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn containerfile_builds_a_non_root_image_from_scratch() {
    let test = "containerfile_builds_a_non_root_image_from_scratch";
    let Some(podman) = installed("podman", test) else {
        return;
    };
    let context = scratch_dir("container-context");
    stage_rootfs(&context);
    let tag = format!("localhost/notify-gateway-test:{}", std::process::id());
    let (built, text) = run(Command::new(&podman)
        .args(["build", "--quiet", "--pull=never", "--file"])
        .arg(workspace_root().join("deploy/Containerfile"))
        .args(["--tag", &tag])
        .arg(&context));
    if !built {
        panic!("podman build failed:\n{text}");
    }
    let (inspected, config) = run(Command::new(&podman).args([
        "image",
        "inspect",
        "--format",
        "{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.ExposedPorts}}|{{.Config.StopSignal}}",
        &tag,
    ]));
    let (removed, removal) = run(Command::new(&podman).args(["rmi", "--force", &tag]));
    assert!(inspected, "podman image inspect failed:\n{config}");
    assert!(removed, "podman rmi {tag} failed:\n{removal}");
    let fields: Vec<&str> = config.trim().split('|').collect();
    assert_eq!(
        fields,
        [
            IMAGE_USER,
            r#"["/usr/local/bin/notify-gateway"]"#,
            r#"{"8765/tcp":{}}"#,
            "SIGTERM"
        ],
        "image config (user, entrypoint, ports, stop signal)"
    );
}

// ---- Kubernetes -------------------------------------------------------------------------------

/// Every document of every manifest in deploy/kubernetes, as JSON values.
fn kubernetes_documents() -> Vec<Value> {
    let dir = workspace_root().join("deploy/kubernetes");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|entry| entry.expect("listing deploy/kubernetes").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    paths.sort();
    let mut documents = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("reading a manifest");
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(document)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            documents.push(value);
        }
    }
    documents
}

fn the_one<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    let mut found = documents.iter().filter(|doc| doc["kind"] == kind);
    let document = found.next().unwrap_or_else(|| panic!("no {kind} manifest"));
    assert!(found.next().is_none(), "more than one {kind}");
    document
}

fn string<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value}"))
}

fn integer(value: &Value, what: &str) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("{what} is not an integer: {value}"))
}

/// Seconds in a whole-second duration such as `10s`.
fn seconds(duration: &str) -> u64 {
    duration
        .strip_suffix('s')
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("{duration:?} is not a whole number of seconds"))
}

/// Bytes in a Kubernetes quantity such as `384Mi` or `1Gi`.
fn bytes(quantity: &str) -> u64 {
    let units = [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)];
    units
        .iter()
        .find_map(|(suffix, unit)| {
            quantity
                .strip_suffix(suffix)
                .and_then(|number| number.parse::<u64>().ok())
                .map(|number| number * unit)
        })
        .unwrap_or_else(|| panic!("{quantity:?} is not a Ki/Mi/Gi quantity"))
}

/// `matchLabels` (or a selector map) is contained in `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("selector is a map");
    !selector.is_empty()
        && selector
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
}

/// Idle RSS per connection and fan-out burst growth per connection, from docs/BENCHMARKS.md
/// (Summary: 2,746 B, the higher run; Fanout table: 8.1 KB), and the gateway's RSS before a
/// burst (33 MB), as deployment.yaml's sizing comment uses them.
const IDLE_BYTES_PER_CONNECTION: u64 = 2_746;
const BURST_BYTES_PER_CONNECTION: u64 = 8_100;
const BASE_RSS_BYTES: u64 = 33_000_000;

#[test]
fn kubernetes_manifests_hold_together() {
    let documents = kubernetes_documents();
    let deployment = the_one(&documents, "Deployment");
    let service = the_one(&documents, "Service");
    let budget = the_one(&documents, "PodDisruptionBudget");
    let config = &the_one(&documents, "ConfigMap")["data"];

    let pod = &deployment["spec"]["template"];
    let pod_labels = &pod["metadata"]["labels"];
    assert!(
        selects(&deployment["spec"]["selector"]["matchLabels"], pod_labels),
        "the Deployment's selector does not match its pods"
    );
    assert!(
        selects(&budget["spec"]["selector"]["matchLabels"], pod_labels),
        "the PodDisruptionBudget's selector does not match the Deployment's pods"
    );
    assert!(
        selects(&service["spec"]["selector"], pod_labels),
        "the Service's selector does not match the Deployment's pods"
    );

    let containers = pod["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container per pod");
    let container = &containers[0];
    let port_names: Vec<&Value> = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|port| &port["name"])
        .collect();
    for port in service["spec"]["ports"].as_array().expect("service ports") {
        assert!(
            port_names.contains(&&port["targetPort"]),
            "the Service targets port {} the container does not name",
            port["targetPort"]
        );
    }
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(
        container["envFrom"][0]["configMapRef"]["name"],
        the_one(&documents, "ConfigMap")["metadata"]["name"],
        "the pods read the ConfigMap"
    );

    // SIGKILL must never cut a drain: the grace period covers the preStop pause and the drain.
    let grace = integer(
        &pod["spec"]["terminationGracePeriodSeconds"],
        "terminationGracePeriodSeconds",
    );
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    let drain = seconds(string(
        &config["NOTIFY_DRAIN_TIMEOUT"],
        "NOTIFY_DRAIN_TIMEOUT",
    ));
    assert!(
        grace > pre_stop + drain,
        "terminationGracePeriodSeconds {grace} <= preStop {pre_stop} s + drain {drain} s"
    );

    // Non-root, as the image's user, on a read-only root file system.
    let pod_security = &pod["spec"]["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"], true);
    let containerfile = std::fs::read_to_string(workspace_root().join("deploy/Containerfile"))
        .expect("deploy/Containerfile");
    let image_user = containerfile
        .lines()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("the Containerfile names a USER");
    assert_eq!(
        format!(
            "{}:{}",
            pod_security["runAsUser"], pod_security["runAsGroup"]
        ),
        image_user,
        "runAsUser:runAsGroup is the image's user"
    );
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));

    // Memory sized for the connection target, as deployment.yaml's comment works it out.
    let max_connections: u64 = string(&config["NOTIFY_MAX_CONNECTIONS"], "NOTIFY_MAX_CONNECTIONS")
        .parse()
        .expect("NOTIFY_MAX_CONNECTIONS is a number");
    let resources = &container["resources"];
    let request = bytes(string(&resources["requests"]["memory"], "memory request"));
    let limit = bytes(string(&resources["limits"]["memory"], "memory limit"));
    assert!(
        max_connections * IDLE_BYTES_PER_CONNECTION < request,
        "{max_connections} idle connections need more than the {request} B requested"
    );
    assert!(
        max_connections * BURST_BYTES_PER_CONNECTION + BASE_RSS_BYTES < limit,
        "a fan-out burst to {max_connections} connections needs more than the {limit} B limit"
    );
    assert!(resources["requests"]["cpu"].is_string(), "a CPU request");
}

/// The ConfigMap's settings as the gateway's flags (`NOTIFY_DRAIN_TIMEOUT` is
/// `--drain-timeout`), less the listen address, which the harness picks.
fn config_map_flags(config: &Value) -> Vec<String> {
    let mut flags = Vec::new();
    for (key, value) in config.as_object().expect("ConfigMap data") {
        if key == "NOTIFY_LISTEN" {
            continue;
        }
        let name = key
            .strip_prefix("NOTIFY_")
            .unwrap_or_else(|| panic!("{key} is not a NOTIFY_* setting"));
        flags.push(format!("--{}", name.to_lowercase().replace('_', "-")));
        flags.push(string(value, key).to_owned());
    }
    flags
}

#[tokio::test]
async fn kubernetes_probe_paths_answer_on_a_gateway_run_with_the_config_map() {
    let documents = kubernetes_documents();
    let container = &the_one(&documents, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let mut flags = config_map_flags(&the_one(&documents, "ConfigMap")["data"]);
    let redis = RedisServer::start().await.expect("redis-server");
    flags.extend(["--redis-url".to_owned(), redis.url()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    // The gateway refuses a setting it does not know, so this also checks every key.
    let gateway = Gateway::start(&flags)
        .await
        .expect("a gateway with the ConfigMap's settings");

    for probe in ["readinessProbe", "livenessProbe"] {
        let path = string(&container[probe]["httpGet"]["path"], probe);
        let answered = wait_until(Duration::from_secs(10), || async {
            matches!(gateway.get(path).await, Ok((200, _)))
        })
        .await;
        assert!(answered, "{probe} {path} never answered 200");
    }
    // Control: a path the gateway does not serve is not 200, so the answers above mean
    // something.
    let (status, _) = gateway.get("/no-such-probe").await.expect("GET");
    assert_eq!(status, 404, "an unknown path");
}
