//! What a worker agrees to run: its policy, checked before an attempt begins.
//!
//! Write access to the jobs topic is not permission to run code on every worker of a pool. A
//! worker runs a shell task only if its policy lists the program (after resolving it, never
//! through a shell unless allowed), and an HTTP task only if its policy lists the host, port and
//! scheme, and the address it resolves to is of an allowed kind (no link-local or cloud metadata
//! address, no loopback or private network unless allowed). Without a policy it runs neither,
//! only the handlers compiled into it; `--allow-any-task` lifts every rule, for development.
//!
//! A refused attempt never begins: it is recorded as failed with the rule and the reason.

use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use kairos_core::job::ShellTask;
use serde::Deserialize;

/// Why a task was refused: the rule it broke, and the details.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// `signature`, `task_type`, `program`, `shell`, `env`, `http_scheme`, `http_host`, `http_address`
    /// or `secret`.
    pub rule: &'static str,
    pub reason: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refused by the worker's policy ({}): {}",
            self.rule, self.reason
        )
    }
}

impl std::error::Error for Refusal {}

fn refuse(rule: &'static str, reason: String) -> Refusal {
    Refusal { rule, reason }
}

/// The policy of a worker.
#[derive(Clone, Debug)]
pub enum Policy {
    /// Development: every task runs.
    AllowAny,
    Enforced(Rules),
}

/// An enforced policy, as its file says it. A task type without a section is not run.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    #[serde(default)]
    pub shell: Option<ShellRules>,
    #[serde(default)]
    pub http: Option<HttpRules>,
    /// The longest any attempt may run, whatever its job's timeout says.
    #[serde(default, with = "humantime_serde")]
    pub max_duration: Option<Duration>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellRules {
    /// Glob patterns of the programs that may run, matched against the absolute path the
    /// command's first word resolves to (`/usr/bin/pg_dump`, `/opt/jobs/*`).
    pub programs: Vec<ProgramPattern>,
    /// Lets a shell (`sh`, `bash`, ...) or a launcher that runs any program (`env`, `xargs`,
    /// ...) be the program: it runs any command it is given.
    #[serde(default)]
    pub allow_shell: bool,
    /// Where a bare program name is looked up; never the task's own `PATH`.
    #[serde(default = "default_search_path")]
    pub path: String,
    /// The most memory (address space) a task's process may map: beyond it, allocations fail.
    #[serde(default)]
    pub max_memory: Option<bytesize::ByteSize>,
    /// The most CPU time a task's process may use: beyond it, it is killed (SIGXCPU).
    #[serde(default, with = "humantime_serde")]
    pub max_cpu: Option<Duration>,
}

/// Where `prlimit` (util-linux), which applies a shell task's resource limits, is looked up.
const PRLIMIT_PATH: &str = "/usr/bin:/bin";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRules {
    /// URL schemes allowed.
    #[serde(default = "default_schemes")]
    pub schemes: Vec<String>,
    /// Hosts allowed: `api.example.com`, `*.example.com` (any subdomain), an IP address; each
    /// with `:port`, or `:*` for any port, or neither for the scheme's default port.
    pub hosts: Vec<HostPattern>,
    #[serde(default)]
    pub allow_loopback: bool,
    /// Private networks: 10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7.
    #[serde(default)]
    pub allow_private: bool,
    /// Link-local addresses, cloud metadata endpoints among them.
    #[serde(default)]
    pub allow_link_local: bool,
}

fn default_search_path() -> String {
    "/usr/local/bin:/usr/bin:/bin".into()
}

fn default_schemes() -> Vec<String> {
    vec!["https".into()]
}

/// Programs that run whatever command they are given: a shell, or a launcher.
const SHELLS: [&str; 19] = [
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "csh", "tcsh", "busybox", "env",
    "xargs", "nice", "nohup", "timeout", "setsid", "stdbuf", "sudo",
];

/// Environment variables that change what a program loads or runs before its own code.
fn is_loader_variable(name: &str) -> bool {
    name.starts_with("LD_") || name.starts_with("DYLD_") || name == "BASH_ENV" || name == "ENV"
}

impl Policy {
    /// Reads a policy file (YAML), refusing unknown fields and patterns that do not compile.
    pub fn load(path: &Path) -> anyhow::Result<Policy> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading the policy {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("the policy {}: {e}", path.display()))
    }

    /// A policy from its YAML; its patterns are compiled as they are read. Resource limits need
    /// `prlimit`: a policy that sets them on a machine without it is refused.
    pub fn parse(text: &str) -> anyhow::Result<Policy> {
        let rules: Rules = serde_yaml_ng::from_str(text)?;
        if rules
            .shell
            .as_ref()
            .is_some_and(|shell| shell.max_memory.is_some() || shell.max_cpu.is_some())
        {
            resolve("prlimit", PRLIMIT_PATH).map_err(|_| {
                anyhow::anyhow!("shell.max_memory and shell.max_cpu need prlimit (util-linux) in {PRLIMIT_PATH}")
            })?;
        }
        Ok(Policy::Enforced(rules))
    }

    /// The program and arguments that start a shell task's program under the policy's resource
    /// limits; `None` without limits.
    pub fn limited(&self) -> Option<(PathBuf, Vec<String>)> {
        let Policy::Enforced(Rules {
            shell: Some(shell), ..
        }) = self
        else {
            return None;
        };
        let mut limits = vec![];
        if let Some(memory) = shell.max_memory {
            limits.push(format!("--as={}", memory.as_u64()));
        }
        if let Some(cpu) = shell.max_cpu {
            limits.push(format!("--cpu={}", cpu.as_secs().max(1)));
        }
        if limits.is_empty() {
            return None;
        }
        let prlimit = resolve("prlimit", PRLIMIT_PATH).ok()?;
        limits.push("--".into());
        Some((prlimit, limits))
    }

    /// The policy of a worker given no policy: only handlers compiled into it run.
    pub fn handlers_only() -> Policy {
        Policy::Enforced(Rules::default())
    }

    /// Whether the worker runs tasks of this built-in type (`shell`, `http`) at all.
    pub fn runs(&self, task_type: &str) -> bool {
        match self {
            Policy::AllowAny => true,
            Policy::Enforced(rules) => match task_type {
                "shell" => rules.shell.is_some(),
                "http" => rules.http.is_some(),
                _ => false,
            },
        }
    }

    /// The timeout an attempt runs under: its job's, capped by `max_duration`.
    pub fn timeout(&self, asked: Option<Duration>) -> Option<Duration> {
        let cap = match self {
            Policy::Enforced(rules) => rules.max_duration,
            Policy::AllowAny => None,
        };
        match (asked, cap) {
            (Some(asked), Some(cap)) => Some(asked.min(cap)),
            (asked, cap) => asked.or(cap),
        }
    }

    /// The program a shell task runs, resolved, if the policy lets it run.
    pub fn admit_shell(&self, shell: &ShellTask) -> Result<PathBuf, Refusal> {
        let program = shell.command.first().map(String::as_str).unwrap_or("");
        let rules = match self {
            Policy::AllowAny => return Ok(PathBuf::from(program)),
            Policy::Enforced(Rules { shell: None, .. }) => {
                return Err(refuse(
                    "task_type",
                    "this worker runs no shell tasks".into(),
                ))
            }
            Policy::Enforced(Rules {
                shell: Some(rules), ..
            }) => rules,
        };
        let variables = shell.env.keys().chain(shell.env_from.keys());
        if let Some(name) = variables.into_iter().find(|name| is_loader_variable(name)) {
            return Err(refuse(
                "env",
                format!("the task sets {name}, which changes what the program loads"),
            ));
        }
        let resolved = resolve(program, &rules.path)?;
        // A link to a shell is a shell.
        let target = std::fs::canonicalize(&resolved).unwrap_or_else(|_| resolved.clone());
        let is_shell = [&resolved, &target].iter().any(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|name| SHELLS.contains(&name))
        });
        if is_shell && !rules.allow_shell {
            return Err(refuse(
                "shell",
                format!(
                    "{} runs any command it is given; the policy does not allow shells",
                    resolved.display()
                ),
            ));
        }
        let listed = rules
            .programs
            .iter()
            .any(|pattern| pattern.matches(&resolved));
        if !listed {
            return Err(refuse(
                "program",
                format!("{} is not among the allowed programs", resolved.display()),
            ));
        }
        Ok(resolved)
    }

    /// The rules of HTTP tasks; `None` when any request goes (development).
    fn http_rules(&self) -> Result<Option<&HttpRules>, Refusal> {
        match self {
            Policy::AllowAny => Ok(None),
            Policy::Enforced(Rules { http: None, .. }) => {
                Err(refuse("task_type", "this worker runs no http tasks".into()))
            }
            Policy::Enforced(Rules {
                http: Some(rules), ..
            }) => Ok(Some(rules)),
        }
    }

    /// Whether the policy lets a request go to this URL (its scheme, host and port), and to the
    /// address, when the host is one.
    pub fn admit_url(&self, url: &url::Url) -> Result<(), Refusal> {
        let Some(rules) = self.http_rules()? else {
            return Ok(());
        };
        if !rules.schemes.iter().any(|s| s == url.scheme()) {
            return Err(refuse(
                "http_scheme",
                format!("scheme {:?} is not allowed", url.scheme()),
            ));
        }
        let host = url.host_str().unwrap_or("").trim_matches(['[', ']']);
        let port = url.port_or_known_default();
        let default_port = url::Url::parse(&format!("{}://x", url.scheme()))
            .ok()
            .and_then(|u| u.port_or_known_default());
        let listed = rules
            .hosts
            .iter()
            .any(|entry| entry.matches(host, port, default_port));
        if !listed {
            return Err(refuse(
                "http_host",
                format!(
                    "{host}:{} is not among the allowed hosts",
                    port.unwrap_or(0)
                ),
            ));
        }
        if let Ok(address) = host.parse::<IpAddr>() {
            self.admit_address(address)?;
        }
        Ok(())
    }

    /// Whether the policy lets a request connect to this address.
    pub fn admit_address(&self, address: IpAddr) -> Result<(), Refusal> {
        let Some(rules) = self.http_rules()? else {
            return Ok(());
        };
        let kind = AddressKind::of(address);
        let allowed = match kind {
            AddressKind::Public => true,
            AddressKind::Loopback => rules.allow_loopback,
            AddressKind::Private => rules.allow_private,
            AddressKind::LinkLocal => rules.allow_link_local,
            AddressKind::Never => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(refuse(
                "http_address",
                format!("{address} is a {} address", kind.name()),
            ))
        }
    }
}

/// The absolute path `program` names: itself if it has a slash (then it must be absolute and
/// plain), else the first executable file of that name on `search`.
fn resolve(program: &str, search: &str) -> Result<PathBuf, Refusal> {
    if program.is_empty() {
        return Err(refuse("program", "the command is empty".into()));
    }
    if program.contains('/') {
        let path = Path::new(program);
        let plain = path.is_absolute()
            && path
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        return if plain {
            Ok(path.to_path_buf())
        } else {
            Err(refuse(
                "program",
                format!("{program:?} is not a plain absolute path"),
            ))
        };
    }
    search
        .split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| Path::new(dir).join(program))
        .find(|path| is_executable(path))
        .ok_or_else(|| {
            refuse(
                "program",
                format!("{program:?} is not found on the policy's path {search}"),
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A program entry of a shell policy: a glob of absolute paths, whose `*` does not cross `/`.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "String")]
pub struct ProgramPattern(glob::Pattern);

impl TryFrom<String> for ProgramPattern {
    type Error = String;

    fn try_from(pattern: String) -> Result<Self, String> {
        if !pattern.starts_with('/') {
            return Err(format!(
                "program pattern {pattern:?} is not an absolute path"
            ));
        }
        glob::Pattern::new(&pattern)
            .map(ProgramPattern)
            .map_err(|e| format!("program pattern {pattern:?}: {e}"))
    }
}

impl ProgramPattern {
    fn matches(&self, program: &Path) -> bool {
        let options = glob::MatchOptions {
            require_literal_separator: true,
            ..glob::MatchOptions::default()
        };
        self.0.matches_path_with(program, options)
    }
}

/// A host entry of an HTTP policy.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "String")]
pub struct HostPattern {
    /// Lower-case; with a leading `*.` for any subdomain.
    host: String,
    /// `None`: the scheme's default port; `Some(None)`: any port.
    port: Option<Option<u16>>,
}

impl TryFrom<String> for HostPattern {
    type Error = anyhow::Error;

    fn try_from(entry: String) -> anyhow::Result<Self> {
        Self::parse(&entry)
    }
}

impl HostPattern {
    fn parse(entry: &str) -> anyhow::Result<Self> {
        let entry = entry.trim().to_ascii_lowercase();
        // `[::1]:8080`, `[::1]`, `host:port`, `host`.
        let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| anyhow::anyhow!("host {entry:?}: unclosed ["))?;
            (
                host.to_string(),
                after.strip_prefix(':').map(str::to_string),
            )
        } else if entry.matches(':').count() == 1 {
            let (host, port) = entry.split_once(':').expect("one colon");
            (host.to_string(), Some(port.to_string()))
        } else {
            (entry.clone(), None)
        };
        anyhow::ensure!(!host.is_empty(), "host {entry:?} is empty");
        let port = match port.as_deref() {
            None => None,
            Some("*") => Some(None),
            Some(port) => Some(Some(port.parse().map_err(|_| {
                anyhow::anyhow!("host {entry:?}: port {port:?} is not a number")
            })?)),
        };
        Ok(HostPattern { host, port })
    }

    fn matches(&self, host: &str, port: Option<u16>, default_port: Option<u16>) -> bool {
        let host = host.to_ascii_lowercase();
        let host_matches = match self.host.strip_prefix("*.") {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => host == self.host,
        };
        let port_matches = match self.port {
            None => port == default_port,
            Some(None) => true,
            Some(Some(allowed)) => port == Some(allowed),
        };
        host_matches && port_matches
    }
}

/// The metadata endpoint of AWS's IPv6 instances, outside fe80::/10.
const AWS_METADATA_V6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// The kinds of address an HTTP policy tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AddressKind {
    Public,
    Loopback,
    Private,
    /// Link-local, cloud metadata endpoints among them.
    LinkLocal,
    /// Unspecified, multicast, broadcast: never a service.
    Never,
}

impl AddressKind {
    fn of(address: IpAddr) -> Self {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        match address {
            IpAddr::V4(v4) => {
                let [a, b, ..] = v4.octets();
                if v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() {
                    AddressKind::Never
                } else if v4.is_loopback() {
                    AddressKind::Loopback
                } else if v4.is_link_local() || v4 == std::net::Ipv4Addr::new(100, 100, 100, 200) {
                    AddressKind::LinkLocal
                } else if v4.is_private() || (a == 100 && (64..128).contains(&b)) {
                    AddressKind::Private
                } else {
                    AddressKind::Public
                }
            }
            IpAddr::V6(v6) => {
                let first = v6.segments()[0];
                if v6.is_unspecified() || v6.is_multicast() {
                    AddressKind::Never
                } else if v6.is_loopback() {
                    AddressKind::Loopback
                } else if (first & 0xffc0) == 0xfe80 || v6 == AWS_METADATA_V6 {
                    AddressKind::LinkLocal
                } else if (first & 0xfe00) == 0xfc00 {
                    AddressKind::Private
                } else {
                    AddressKind::Public
                }
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            AddressKind::Public => "public",
            AddressKind::Loopback => "loopback",
            AddressKind::Private => "private network",
            AddressKind::LinkLocal => "link-local or metadata",
            AddressKind::Never => "non-unicast",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn shell(command: &[&str]) -> ShellTask {
        ShellTask {
            env_from: Default::default(),
            command: command.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            working_dir: None,
        }
    }

    fn policy(yaml: &str) -> Policy {
        Policy::parse(yaml).expect("a valid policy")
    }

    /// Given a policy that lists one program, when tasks name it, another program, a shell, a
    /// relative path or set a loader variable, then only the listed program runs, resolved on
    /// the policy's path and not the task's.
    #[test]
    fn a_shell_task_runs_only_a_listed_program_never_a_shell_unless_allowed() {
        let p = policy("shell:\n  programs: [/usr/bin/true, /bin/true]\n");
        let resolved = p.admit_shell(&shell(&["true"])).expect("listed");
        assert!(resolved.ends_with("true") && resolved.is_absolute());
        assert_eq!(
            p.admit_shell(&shell(&["/usr/bin/false"])).unwrap_err().rule,
            "program"
        );
        assert_eq!(
            p.admit_shell(&shell(&["sh", "-c", "true"]))
                .unwrap_err()
                .rule,
            "shell"
        );
        assert_eq!(
            p.admit_shell(&shell(&["/usr/bin/env", "true"]))
                .unwrap_err()
                .rule,
            "shell"
        );
        assert_eq!(
            p.admit_shell(&shell(&["./true"])).unwrap_err().rule,
            "program"
        );
        assert_eq!(
            p.admit_shell(&shell(&["/usr/bin/../bin/true"]))
                .unwrap_err()
                .rule,
            "program"
        );
        let mut preload = shell(&["true"]);
        preload
            .env
            .insert("LD_PRELOAD".into(), "/tmp/evil.so".into());
        assert_eq!(p.admit_shell(&preload).unwrap_err().rule, "env");
        // Nor through a secret.
        let mut secret_preload = shell(&["true"]);
        secret_preload.env_from.insert(
            "LD_PRELOAD".into(),
            kairos_core::secrets::SecretRef::named("evil"),
        );
        assert_eq!(p.admit_shell(&secret_preload).unwrap_err().rule, "env");
        // The task's PATH is not where the program is looked up.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("true");
        std::fs::write(&fake, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut path_trap = shell(&["true"]);
        path_trap
            .env
            .insert("PATH".into(), dir.path().display().to_string());
        assert_eq!(p.admit_shell(&path_trap).expect("listed"), resolved);

        let shells = policy("shell:\n  programs: ['/usr/bin/*', '/bin/*']\n  allow_shell: true\n");
        assert!(shells.admit_shell(&shell(&["sh", "-c", "true"])).is_ok());
        // A pattern does not cross directories.
        let one_level = policy("shell:\n  programs: ['/usr/*']\n");
        assert_eq!(
            one_level
                .admit_shell(&shell(&["/usr/bin/true"]))
                .unwrap_err()
                .rule,
            "program"
        );
    }

    /// Given no policy, when a shell or http task comes, then neither runs; in development mode
    /// both do; a cap shortens a longer timeout and bounds a task without one.
    #[test]
    fn without_a_policy_no_shell_or_http_task_runs_and_the_cap_bounds_timeouts() {
        let none = Policy::handlers_only();
        assert!(!none.runs("shell") && !none.runs("http"));
        assert_eq!(
            none.admit_shell(&shell(&["true"])).unwrap_err().rule,
            "task_type"
        );
        let url = url::Url::parse("https://example.com/").unwrap();
        assert_eq!(none.admit_url(&url).unwrap_err().rule, "task_type");
        assert!(Policy::AllowAny
            .admit_shell(&shell(&["sh", "-c", "x"]))
            .is_ok());

        let capped = policy("max_duration: 10s\n");
        let secs = Duration::from_secs;
        assert_eq!(capped.timeout(Some(secs(60))), Some(secs(10)));
        assert_eq!(capped.timeout(Some(secs(5))), Some(secs(5)));
        assert_eq!(capped.timeout(None), Some(secs(10)));
        assert_eq!(Policy::AllowAny.timeout(None), None);
    }

    /// Given an HTTP policy, when URLs differ in scheme, host, port and address, then only
    /// the listed ones with an allowed kind of address pass.
    #[test]
    fn an_http_task_goes_only_to_listed_hosts_ports_schemes_and_kinds_of_address() {
        let p = policy(
            "http:\n  hosts: [api.example.com, '*.svc.example.com:8443', '127.0.0.1:*', '169.254.169.254']\n",
        );
        let check = |url: &str| {
            p.admit_url(&url::Url::parse(url).unwrap())
                .map_err(|r| r.rule)
        };
        assert_eq!(check("https://api.example.com/x"), Ok(()));
        assert_eq!(check("http://api.example.com/x"), Err("http_scheme"));
        assert_eq!(check("https://api.example.com:8443/x"), Err("http_host"));
        assert_eq!(check("https://a.svc.example.com:8443/"), Ok(()));
        assert_eq!(check("https://svc.example.com:8443/"), Err("http_host"));
        assert_eq!(check("https://evil.com/"), Err("http_host"));
        // Listed, but of a kind the policy does not allow.
        assert_eq!(check("https://127.0.0.1:9000/"), Err("http_address"));
        assert_eq!(check("https://169.254.169.254/"), Err("http_address"));

        let kind = |a: &str| AddressKind::of(a.parse().unwrap());
        assert_eq!(kind("8.8.8.8"), AddressKind::Public);
        assert_eq!(kind("10.1.2.3"), AddressKind::Private);
        assert_eq!(kind("100.64.0.1"), AddressKind::Private);
        assert_eq!(kind("::ffff:127.0.0.1"), AddressKind::Loopback);
        assert_eq!(kind("fe80::1"), AddressKind::LinkLocal);
        assert_eq!(kind("fd00:ec2::254"), AddressKind::LinkLocal);
        assert_eq!(kind("fd12::1"), AddressKind::Private);
        assert_eq!(kind("0.0.0.0"), AddressKind::Never);

        let open =
            policy("http:\n  schemes: [http]\n  hosts: ['127.0.0.1:*']\n  allow_loopback: true\n");
        assert!(open
            .admit_url(&url::Url::parse("http://127.0.0.1:8080/").unwrap())
            .is_ok());
    }

    #[test]
    fn a_policy_with_an_unknown_field_or_a_bad_pattern_is_refused_at_start() {
        assert!(Policy::parse("shel:\n  programs: []\n").is_err());
        assert!(Policy::parse("shell:\n  programs: [relative/*]\n").is_err());
        assert!(Policy::parse("http:\n  hosts: ['x:port']\n").is_err());
    }
}
