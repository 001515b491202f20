//! Deployment artefacts checked against the code. No container engine, cluster or Grafana runs on our machines,
//! so what each artefact relies on is checked here instead: the Dockerfile's build stage copies every file the
//! build reads (include_str!/include_bytes! targets, build scripts, the targets Cargo.toml declares) and has
//! libclang; the Kubernetes manifests and the Debian package name only flags, environment variables, config
//! keys, routes and ports that pgveil has; the Grafana dashboard queries only metrics pgveil exports, each as
//! its kind allows. tests/deb.sh builds, installs and runs the Debian package itself.
// Test code: a failed unwrap is a failed test; std locks are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every `.rs` file under `dir` (relative to the repository root).
fn rust_files(dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root().join(dir)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out
}

/// The workspace members besides the root package (`[workspace] members` in Cargo.toml: folders, no globs).
fn workspace_members() -> Vec<String> {
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let members = manifest.get("workspace").and_then(|w| w.get("members"));
    members
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .map(|m| {
            let m = m.as_str().unwrap();
            assert!(!m.contains('*'), "member glob {m} cannot be checked");
            m.trim_end_matches('/').to_owned()
        })
        .collect()
}

/// Every `.rs` file of the crates the binary is built from: `src/` and each workspace member's `src/`.
fn source_files() -> Vec<PathBuf> {
    let mut out = rust_files("src");
    for member in workspace_members() {
        out.extend(rust_files(&format!("{member}/src")));
    }
    out
}

/// `path` relative to the repository root, with `.` and `..` resolved lexically.
fn normalize(path: &Path) -> String {
    let rel = path.strip_prefix(root()).unwrap_or(path);
    let mut parts: Vec<String> = Vec::new();
    for c in rel.components() {
        match c {
            Component::ParentDir => {
                parts
                    .pop()
                    .expect("a path that stays inside the repository");
            }
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    parts.join("/")
}

/// The string literal starting at the first `"` of `s` (no escapes expected in paths).
fn first_literal(s: &str) -> Option<&str> {
    let start = s.find('"')? + 1;
    let len = s[start..].find('"')?;
    Some(&s[start..start + len])
}

/// Files the crates embed: the literal argument of every include_str!/include_bytes!/include! in `src/` and the
/// workspace members' `src/`, resolved as rustc does (relative to the including file, or to the including
/// crate's CARGO_MANIFEST_DIR).
fn embedded_files() -> BTreeSet<String> {
    let members = workspace_members();
    let mut out = BTreeSet::new();
    for file in source_files() {
        let rel = normalize(&file);
        let manifest_dir = members
            .iter()
            .find(|m| rel.starts_with(&format!("{m}/")))
            .map_or_else(root, |m| root().join(m));
        let text = std::fs::read_to_string(&file).unwrap();
        for mac in ["include_str!", "include_bytes!", "include!"] {
            for (at, _) in text.match_indices(mac) {
                let args = text[at + mac.len()..].trim_start();
                let args = args.strip_prefix('(').expect("macro call");
                let arg = args.trim_start();
                let path =
                    if let Some(rest) = arg.strip_prefix("concat!(env!(\"CARGO_MANIFEST_DIR\")") {
                        manifest_dir.join(first_literal(rest).unwrap().trim_start_matches('/'))
                    } else {
                        assert!(
                            arg.starts_with('"'),
                            "{}: {mac} of a non-literal path cannot be checked: {}",
                            file.display(),
                            &arg[..arg.len().min(60)]
                        );
                        file.parent().unwrap().join(first_literal(arg).unwrap())
                    };
                out.insert(normalize(&path));
            }
        }
    }
    out
}

/// Files Cargo reads to build the binary besides the sources: manifests (the root's and each workspace
/// member's), lock file, build script, and every target declared in Cargo.toml (cargo resolves their paths when
/// it loads the manifest, whatever it builds).
fn manifest_files() -> BTreeSet<String> {
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let mut out: BTreeSet<String> = ["Cargo.toml", "Cargo.lock"].map(String::from).into();
    for member in workspace_members() {
        let theirs: toml::Value = toml::from_str(&read(&format!("{member}/Cargo.toml"))).unwrap();
        assert!(
            theirs.get("package").and_then(|p| p.get("build")).is_none()
                && !root().join(&member).join("build.rs").exists()
                && ["test", "example", "bench", "bin"]
                    .iter()
                    .all(|k| theirs.get(k).is_none()),
            "{member}: build scripts and declared targets of members are not checked here"
        );
        out.insert(format!("{member}/Cargo.toml"));
    }
    match manifest["package"].get("build") {
        Some(toml::Value::String(b)) => {
            out.insert(b.clone());
        }
        Some(toml::Value::Boolean(false)) => {}
        _ => {
            if root().join("build.rs").exists() {
                out.insert("build.rs".into());
            }
        }
    }
    for (kind, dir) in [
        ("test", "tests"),
        ("example", "examples"),
        ("bench", "benches"),
        ("bin", "src/bin"),
    ] {
        for t in manifest
            .get(kind)
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            let name = t["name"].as_str().unwrap();
            let path = match t.get("path") {
                Some(p) => p.as_str().unwrap().to_owned(),
                None if root().join(dir).join(format!("{name}.rs")).exists() => {
                    format!("{dir}/{name}.rs")
                }
                None => format!("{dir}/{name}/main.rs"),
            };
            out.insert(path);
        }
    }
    out
}

/// A Dockerfile's instructions (continuation lines joined, comments dropped), split into stages.
fn docker_stages(text: &str) -> Vec<Vec<String>> {
    let mut stages: Vec<Vec<String>> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let instr = std::mem::take(&mut current);
        if instr.to_ascii_uppercase().starts_with("FROM ") {
            stages.push(Vec::new());
        }
        stages.last_mut().expect("FROM first").push(instr);
    }
    stages
}

/// Sources of the stage's `COPY` instructions that read the build context (not `--from`).
fn copy_sources(stage: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for instr in stage {
        let words: Vec<&str> = instr.split_whitespace().collect();
        if !words[0].eq_ignore_ascii_case("COPY") || words.iter().any(|w| w.starts_with("--from")) {
            continue;
        }
        let args: Vec<&str> = words[1..]
            .iter()
            .copied()
            .filter(|w| !w.starts_with("--"))
            .collect();
        for src in &args[..args.len() - 1] {
            out.push(
                src.trim_start_matches("./")
                    .trim_end_matches('/')
                    .to_owned(),
            );
        }
    }
    out
}

/// Whether a .dockerignore pattern (segments, `*` within a segment, `**` for any segments) excludes `path`
/// (a pattern that matches a folder excludes everything under it).
fn ignored(pattern: &str, path: &str) -> bool {
    fn seg(p: &str, s: &str) -> bool {
        match p.split_once('*') {
            None => p == s,
            Some((head, tail)) => {
                s.starts_with(head)
                    && (0..=s.len() - head.len()).any(|i| seg(tail, &s[head.len() + i..]))
            }
        }
    }
    fn walk(p: &[&str], s: &[&str]) -> bool {
        match (p.first(), s.first()) {
            (None, _) => true,
            (Some(&"**"), _) => (0..=s.len()).any(|i| walk(&p[1..], &s[i..])),
            (Some(ps), Some(ss)) => seg(ps, ss) && walk(&p[1..], &s[1..]),
            (Some(_), None) => false,
        }
    }
    let p: Vec<&str> = pattern.trim_matches('/').split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    walk(&p, &s)
}

#[test]
fn dockerfile_build_stage_copies_every_file_the_build_reads() {
    let dockerfile = read("docker/Dockerfile");
    let stages = docker_stages(&dockerfile);
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let (build, runtime) = (&stages[0], &stages[1]);
    let copied = copy_sources(build);
    let ignore: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();

    let embedded = embedded_files();
    // The scanner finds what we know is embedded (else it is broken, and the check below proves nothing).
    for known in ["policies/payments.toml", "crates/pgcluster/src/schema.sql"] {
        assert!(
            embedded.contains(known),
            "{known} not found among {embedded:?}"
        );
    }
    let mut needed: BTreeSet<String> = embedded;
    needed.extend(manifest_files());
    needed.extend(source_files().iter().map(|p| normalize(p)));
    for path in &needed {
        assert!(
            root().join(path).exists(),
            "{path} is read by the build but does not exist"
        );
        assert!(
            copied
                .iter()
                .any(|c| path == c || path.starts_with(&format!("{c}/"))),
            "docker/Dockerfile's build stage does not COPY {path} (COPY sources: {copied:?})"
        );
        if let Some(p) = ignore.iter().find(|p| ignored(p, path)) {
            panic!(".dockerignore pattern {p:?} keeps {path} out of the build context");
        }
    }
    for c in &copied {
        assert!(
            root().join(c).exists(),
            "COPY {c}: no such file in the repository"
        );
    }
    // The build output and npm trees never enter the context.
    for kept_out in ["target/release/pgveil", "tests/browser/node_modules/x"] {
        assert!(
            ignore.iter().any(|p| ignored(p, kept_out)),
            "{kept_out} is not in .dockerignore"
        );
    }
    // pg_query's build script runs bindgen, which needs libclang in the build stage.
    if read("Cargo.lock").contains("name = \"bindgen\"") {
        assert!(
            build
                .iter()
                .any(|i| i.starts_with("RUN ") && i.contains("libclang-dev")),
            "the build stage installs no libclang: {build:#?}"
        );
    }
    // The runtime stage: the binary from the build stage, the example policy, an unprivileged user.
    assert!(
        runtime
            .iter()
            .any(|i| i.starts_with("COPY --from=build /src/target/release/pgveil "))
    );
    for c in copy_sources(runtime) {
        assert!(root().join(&c).exists(), "runtime COPY {c}: no such file");
    }
    assert!(
        runtime
            .iter()
            .any(|i| i.starts_with("USER ") && !i.contains("root"))
    );
}

/// `pgveil <sub> --help`: the subcommand exists, and the flags it lists.
fn help(sub: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(sub)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "pgveil {sub:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Checks a pgveil command line: the subcommand exists and every `--flag` is one of its flags.
fn check_command_line(args: &[&str]) {
    let sub: Vec<&str> = args
        .iter()
        .copied()
        .take_while(|a| !a.starts_with('-'))
        .collect();
    let text = help(&sub);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        let flag = flag.split('=').next().unwrap();
        assert!(
            text.split(|c: char| c.is_whitespace() || c == ',')
                .any(|w| w == flag),
            "pgveil {sub:?} has no flag {flag}:\n{text}"
        );
    }
}

/// Environment variables pgveil reads: string literals `"PGVEIL_..."` in its sources.
fn check_env_var(name: &str) {
    if !name.starts_with("PGVEIL_") {
        return;
    }
    let quoted = format!("\"{name}\"");
    assert!(
        source_files()
            .iter()
            .any(|f| std::fs::read_to_string(f).unwrap().contains(&quoted)),
        "pgveil reads no environment variable {name}"
    );
}

/// Loads a config as pgveil does (unknown keys are errors; every problem reported), with `/etc/pgveil/` mapped
/// to a folder holding what the image and the package install there (the example policy).
fn check_config(text: &str) -> pgveil::config::Config {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().display().to_string();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/payments.toml"),
        read("policies/payments.toml"),
    )
    .unwrap();
    let path = dir.path().join("pgveil.toml");
    std::fs::write(&path, text.replace("/etc/pgveil", &etc)).unwrap();
    pgveil::config::Config::load_offline(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// The YAML documents of a manifest, through PyYAML (as JSON).
fn yaml_documents(rel: &str) -> Vec<Value> {
    let o = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(root().join(rel))
        .output()
        .expect("python3 with PyYAML");
    assert!(
        o.status.success(),
        "{rel}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&o.stdout).unwrap()
}

#[test]
fn kubernetes_manifests_name_only_flags_keys_routes_and_ports_that_exist() {
    let docs = yaml_documents("deploy/kubernetes/pgveil.yaml");
    let by_kind: BTreeMap<&str, &Value> = docs
        .iter()
        .map(|d| (d["kind"].as_str().unwrap(), d))
        .collect();
    for kind in [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ConfigMap",
        "ServiceAccount",
    ] {
        assert!(by_kind.contains_key(kind), "no {kind}");
    }
    let cm = by_kind["ConfigMap"];
    let cfg = check_config(cm["data"]["pgveil.toml"].as_str().unwrap());
    // Stateless replicas: secrets through the cloud role (no file store), one shared control database.
    assert!(matches!(
        cfg.secrets.backend,
        pgveil::config::SecretBackend::Aws
    ));
    assert!(cfg.control.is_some() && cfg.api.is_some() && cfg.metrics.is_some());
    let sa = by_kind["ServiceAccount"];
    assert!(sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].is_string());

    let dep = by_kind["Deployment"];
    let pod = &dep["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert_eq!(&dep["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(pod["spec"]["serviceAccountName"], sa["metadata"]["name"]);
    let containers = pod["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    check_command_line(&args);
    let config_arg = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == config_arg)
        .expect("the --config file is mounted");
    assert!(cm["data"][mount["subPath"].as_str().unwrap()].is_string());
    for e in c["env"].as_array().unwrap() {
        check_env_var(e["name"].as_str().unwrap());
    }
    let ports: BTreeMap<&str, u64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports["postgres"], u64::from(cfg.listen.addr.port()));
    assert_eq!(
        ports["api"],
        u64::from(cfg.api.as_ref().unwrap().addr.port())
    );
    assert_eq!(
        ports["metrics"],
        u64::from(cfg.metrics.as_ref().unwrap().addr.port())
    );
    // Readiness on the API's health route (TLS), liveness on the proxy port.
    let ready = &c["readinessProbe"]["httpGet"];
    let path = ready["path"].as_str().unwrap();
    assert!(
        read("src/api/routes.rs").contains(&format!(".route(\"{path}\"")),
        "the API has no route {path}"
    );
    assert_eq!(ready["scheme"], "HTTPS", "the API only speaks TLS");
    assert_eq!(ready["port"], "api");
    assert_eq!(c["livenessProbe"]["tcpSocket"]["port"], "postgres");
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(
        ann["prometheus.io/port"].as_str().unwrap(),
        ports["metrics"].to_string()
    );
    // Unprivileged as the image's user; longer grace than pgveil's 30 s drain.
    let uid = read("docker/Dockerfile")
        .split("--uid ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert_eq!(
        pod["spec"]["securityContext"]["runAsUser"].as_u64(),
        Some(uid)
    );
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert!(
        pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap()
            > 30
    );

    for kind in ["Service", "PodDisruptionBudget"] {
        let sel = &by_kind[kind]["spec"]["selector"];
        let sel = sel.get("matchLabels").unwrap_or(sel);
        for (k, v) in sel.as_object().unwrap() {
            assert_eq!(
                &labels[k], v,
                "{kind} selects {k}={v}, which the pods do not carry"
            );
        }
    }
    for p in by_kind["Service"]["spec"]["ports"].as_array().unwrap() {
        let target = p["targetPort"].as_str().unwrap();
        assert!(
            ports.contains_key(target),
            "Service targets unknown port {target}"
        );
    }
}

#[test]
fn debian_package_config_and_unit_name_only_what_exists() {
    let cfg = check_config(&read("deploy/debian/pgveil.toml"));
    assert!(
        cfg.policy.is_some(),
        "the package installs the example policy for [policy]"
    );
    let unit = read("deploy/debian/pgveil.service");
    let value = |key: &str| -> Vec<&str> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .collect()
    };
    for key in ["ExecStart", "ExecStartPre"] {
        let line = value(key)[0];
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[0], "/usr/bin/pgveil");
        assert!(line.contains("--config /etc/pgveil/pgveil.toml"), "{line}");
        check_command_line(&words[1..]);
    }
    for e in value("Environment") {
        check_env_var(e.split('=').next().unwrap());
    }
    assert_eq!(value("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    for (key, want) in [
        ("User", "pgveil"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
    ] {
        assert_eq!(value(key), [want], "{key}");
    }
    // The package's files are named by the build script.
    let build = read("deploy/debian/build-deb.sh");
    for f in [
        "pgveil.toml",
        "policies/payments.toml",
        "pgveil.service",
        "postinst",
    ] {
        assert!(build.contains(f), "build-deb.sh does not install {f}");
    }
}

/// Metrics pgveil exports: the name in each `describe_<kind>!` of src/telemetry.rs, kept only when some code
/// also records it (`<kind>!("name"`), with its kind.
fn exported_metrics() -> BTreeMap<String, &'static str> {
    let described = read("src/telemetry.rs");
    let sources: String = source_files()
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let mut out = BTreeMap::new();
    for kind in ["counter", "gauge", "histogram"] {
        let mac = format!("describe_{kind}!(");
        for (at, _) in described.match_indices(&mac) {
            let name = first_literal(&described[at + mac.len()..]).unwrap();
            let recorded = sources.match_indices(&format!("{kind}!(")).any(|(i, m)| {
                !sources[..i].ends_with("describe_")
                    && sources[i + m.len()..]
                        .trim_start()
                        .starts_with(&format!("\"{name}\""))
            });
            if recorded {
                out.insert(name.to_owned(), kind);
            }
        }
    }
    out
}

/// Every PromQL expression of a Grafana dashboard (panel targets and template queries), nested rows included.
fn expressions(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => expressions(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| expressions(x, out)),
        _ => {}
    }
}

#[test]
fn grafana_dashboard_queries_only_exported_metrics() {
    let exported = exported_metrics();
    assert!(
        exported.len() >= 10,
        "the scan found too few metrics: {exported:?}"
    );
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/pgveil.json")).unwrap();
    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    let mut queried = BTreeSet::new();
    for expr in &exprs {
        for (at, _) in expr.match_indices("pgveil_") {
            if at > 0 && expr[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = expr[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let (base, series) = match ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
            {
                Some(base) if exported.get(base) == Some(&"histogram") => {
                    (base.to_owned(), &name[base.len()..])
                }
                _ => (name.clone(), ""),
            };
            let kind = exported.get(&base).unwrap_or_else(|| {
                panic!("the dashboard queries {name}, which pgveil does not export: {expr}")
            });
            let in_rate = ["rate(", "increase("]
                .iter()
                .any(|f| expr[..at].ends_with(f));
            queried.insert(base);
            if expr[..at].ends_with("label_values(") {
                continue; // a template variable's label lookup: any kind
            }
            match *kind {
                "counter" => assert!(
                    in_rate,
                    "counter {name} used without rate()/increase(): {expr}"
                ),
                "gauge" => assert!(!in_rate, "gauge {name} inside rate(): {expr}"),
                _ => assert!(
                    series == "_bucket" && in_rate,
                    "histogram {name}: rate of _bucket expected: {expr}"
                ),
            }
        }
    }
    // The areas the issue asks for: connections, auth results, masking decisions, pool waits, secret fetches.
    for m in [
        "pgveil_client_connections",
        "pgveil_auth_total",
        "pgveil_statements_total",
        "pgveil_pool_wait_seconds",
        "pgveil_secret_fetch_total",
    ] {
        assert!(queried.contains(m), "the dashboard shows no {m}");
    }
}
