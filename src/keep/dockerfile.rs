//! Which images a Dockerfile needs, read the way BuildKit reads it (`ferry check --dockerfile`).
//!
//! The syntax (continuations, parser directives, flags, here-documents) is parsed by the
//! `parse-dockerfile` crate; what BuildKit then *does* with it is here, because no crate does
//! it: global `ARG`s (declared before the first `FROM`) and `--build-arg` substituted into
//! `FROM` lines (`$X`, `${X}`, `${X:-default}`, `${X:+alt}`), with BuildKit's automatic
//! platform args; stage names (a `FROM`, `COPY --from` or `RUN --mount=from=` naming a stage
//! or a stage index is not an image); `--target` (only the stages it depends on are built);
//! the `# syntax=` frontend image; and image names normalised as a mirror holds them
//! (`alpine` → `docker.io/library/alpine:latest`).

use std::collections::{BTreeMap, HashMap, HashSet};

use parse_dockerfile::Instruction;
use serde::Serialize;

use crate::error::{Error, Result};

/// One image the build needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Need {
    /// As a mirror names it: `docker.io/library/alpine`, `ghcr.io/org/app`.
    pub repository: String,
    /// `TAG`, or `sha256:…` for a digest.
    pub reference: String,
    /// What asks for it: `FROM (stage build)`, `COPY --from`, `RUN --mount`, `# syntax`.
    pub used_by: String,
    /// `FROM --platform=…`, substituted, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

impl Need {
    /// `REPO:TAG` or `REPO@DIGEST`.
    pub fn reference_string(&self) -> String {
        if self.reference.contains(':') {
            format!("{}@{}", self.repository, self.reference)
        } else {
            format!("{}:{}", self.repository, self.reference)
        }
    }
}

/// Normalise an image reference as docker does (`alpine` → `docker.io/library/alpine:latest`);
/// a digest wins over a tag. `None` for what is not an image reference.
pub fn normalize(image: &str) -> Option<(String, String)> {
    let image = image.trim();
    if image.is_empty() || image.contains(char::is_whitespace) {
        return None;
    }
    let (name, reference) = match image.split_once('@') {
        Some((n, d)) => {
            let d: crate::vocab::digest::Digest = d.parse().ok()?;
            // `name:tag@digest`: the digest decides.
            let n = match n.rsplit_once(':') {
                Some((a, t)) if !t.contains('/') => a,
                _ => n,
            };
            (n, d.to_string())
        }
        None => match image.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => {
                crate::vocab::reference::Reference::parse(t).ok()?;
                (n, t.to_owned())
            }
            _ => (image, "latest".to_owned()),
        },
    };
    let first = name.split('/').next().unwrap_or("");
    let name = if name.contains('/') && crate::mirror::proxy::is_host(first) {
        let (host, rest) = name.split_once('/')?;
        let host = if matches!(host, "index.docker.io" | "registry-1.docker.io") {
            "docker.io"
        } else {
            host
        };
        if host == "docker.io" && !rest.contains('/') {
            format!("docker.io/library/{rest}")
        } else {
            format!("{host}/{rest}")
        }
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    Some((name, reference))
}

/// BuildKit's shell-style substitution of `$X`, `${X}`, `${X:-word}`, `${X:+word}` (and the
/// forms without `:`), as applied to `FROM` lines. Unset variables become empty.
pub fn substitute(s: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && i + 1 < chars.len() && chars[i + 1] == '$' {
            out.push('$');
            i += 2;
            continue;
        }
        if c != '$' || i + 1 >= chars.len() {
            out.push(c);
            i += 1;
            continue;
        }
        if chars[i + 1] == '{' {
            // The matching brace (a default may hold `${…}` itself).
            let mut depth = 0usize;
            let Some(end) = chars[i + 2..].iter().position(|c| match c {
                '{' => {
                    depth += 1;
                    false
                }
                '}' if depth == 0 => true,
                '}' => {
                    depth -= 1;
                    false
                }
                _ => false,
            }) else {
                out.extend(&chars[i..]);
                break;
            };
            let inner: String = chars[i + 2..i + 2 + end].iter().collect();
            i += 3 + end;
            let (name, op, word) = match inner.find([':', '-', '+']) {
                Some(p) => {
                    let (n, rest) = inner.split_at(p);
                    let (op, word) = if let Some(w) = rest.strip_prefix(":-") {
                        (":-", w)
                    } else if let Some(w) = rest.strip_prefix(":+") {
                        (":+", w)
                    } else if let Some(w) = rest.strip_prefix('-') {
                        ("-", w)
                    } else if let Some(w) = rest.strip_prefix('+') {
                        ("+", w)
                    } else {
                        ("", "")
                    };
                    (n.to_owned(), op, word.to_owned())
                }
                None => (inner.clone(), "", String::new()),
            };
            let val = vars.get(&name);
            let word = substitute(&word, vars);
            out.push_str(&match (op, val) {
                (":-", Some(v)) if !v.is_empty() => v.clone(),
                (":-", _) => word,
                ("-", Some(v)) => v.clone(),
                ("-", None) => word,
                (":+", Some(v)) if !v.is_empty() => word,
                (":+", _) => String::new(),
                ("+", Some(_)) => word,
                ("+", None) => String::new(),
                (_, v) => v.cloned().unwrap_or_default(),
            });
            continue;
        }
        let name: String = chars[i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
            .collect();
        if name.is_empty() {
            out.push('$');
            i += 1;
            continue;
        }
        i += 1 + name.chars().count();
        out.push_str(vars.get(&name).map(String::as_str).unwrap_or(""));
    }
    out
}

/// `K=V` words of an `ARG` line (quotes removed); a name alone has no default.
fn arg_words(s: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut words = Vec::new();
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => quote = Some(c),
            (None, c) if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            (None, c) => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    for w in words {
        match w.split_once('=') {
            Some((k, v)) => out.push((k.to_owned(), Some(v.to_owned()))),
            None => out.push((w, None)),
        }
    }
    out
}

/// BuildKit's automatic platform args, for this host.
fn platform_args() -> HashMap<String, String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "s390x" => "s390x",
        "powerpc64" => "ppc64le",
        other => other,
    };
    let p = format!("linux/{arch}");
    let mut m = HashMap::new();
    for pre in ["BUILD", "TARGET"] {
        m.insert(format!("{pre}PLATFORM"), p.clone());
        m.insert(format!("{pre}OS"), "linux".to_owned());
        m.insert(format!("{pre}ARCH"), arch.to_owned());
        m.insert(format!("{pre}VARIANT"), String::new());
    }
    m
}

struct Stage {
    name: Option<String>,
    /// The base: another stage's index, or an image (or nothing for `scratch`).
    base: Base,
    platform: Option<String>,
    /// `COPY --from` / `RUN --mount=from=` sources: a stage name or index, or an image.
    uses: Vec<(String, &'static str)>,
}

enum Base {
    Stage(usize),
    Image(String),
    Scratch,
}

/// Every image a build of `text` needs, given `--build-arg`s and an optional `--target`.
pub fn needs(
    text: &str,
    build_args: &[(String, String)],
    target: Option<&str>,
) -> Result<Vec<Need>> {
    let df = parse_dockerfile::parse(text)
        .map_err(|e| Error::Usage(format!("the Dockerfile does not parse: {e}")))?;
    let overrides: HashMap<&str, &str> = build_args
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // Global scope: platform args, then ARGs before the first FROM (overridden by --build-arg).
    let mut global = platform_args();
    let mut stages: Vec<Stage> = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for ins in &df.instructions {
        match ins {
            Instruction::Arg(a) if stages.is_empty() => {
                for (k, v) in arg_words(&a.arguments.value) {
                    let val = match overrides.get(k.as_str()) {
                        Some(o) => Some((*o).to_owned()),
                        None => v.map(|v| substitute(&v, &global)),
                    };
                    match val {
                        Some(v) => {
                            global.insert(k, v);
                        }
                        None => {
                            global.entry(k).or_default();
                        }
                    }
                }
            }
            Instruction::From(f) => {
                let image = substitute(&f.image.value, &global);
                let platform = f
                    .options
                    .iter()
                    .find(|o| o.name.value == "platform")
                    .and_then(|o| o.value.as_ref())
                    .map(|v| substitute(&v.value, &global));
                let name = f.as_.as_ref().map(|(_, n)| n.value.to_lowercase());
                let base = if image.eq_ignore_ascii_case("scratch") {
                    Base::Scratch
                } else if let Some(i) = names.get(&image.to_lowercase()) {
                    Base::Stage(*i)
                } else {
                    Base::Image(image)
                };
                if let Some(n) = &name {
                    names.insert(n.clone(), stages.len());
                }
                stages.push(Stage {
                    name,
                    base,
                    platform,
                    uses: Vec::new(),
                });
            }
            Instruction::Copy(c) => {
                if let Some(st) = stages.last_mut() {
                    for o in c.options.iter().filter(|o| o.name.value == "from") {
                        if let Some(v) = &o.value {
                            st.uses.push((v.value.to_string(), "COPY --from"));
                        }
                    }
                }
            }
            Instruction::Run(r) => {
                if let Some(st) = stages.last_mut() {
                    for o in r.options.iter().filter(|o| o.name.value == "mount") {
                        let Some(v) = &o.value else { continue };
                        for kv in v.value.split(',') {
                            if let Some(from) = kv.trim().strip_prefix("from=") {
                                st.uses.push((from.to_owned(), "RUN --mount"));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if stages.is_empty() {
        return Err(Error::Usage("the Dockerfile has no FROM".into()));
    }
    // Which stages the build runs: the target's (default: the last) and what it depends on.
    let start = match target {
        None => stages.len() - 1,
        Some(t) => *names.get(&t.to_lowercase()).ok_or_else(|| {
            Error::Usage(format!(
                "--target {t}: no such stage (stages: {})",
                stages
                    .iter()
                    .filter_map(|s| s.name.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?,
    };
    let stage_ref = |s: &str, before: usize| -> Option<usize> {
        if let Some(i) = names.get(&s.to_lowercase()) {
            return Some(*i);
        }
        s.parse::<usize>().ok().filter(|i| *i < before)
    };
    let mut wanted = HashSet::new();
    let mut todo = vec![start];
    while let Some(i) = todo.pop() {
        if !wanted.insert(i) {
            continue;
        }
        if let Base::Stage(b) = stages[i].base {
            todo.push(b);
        }
        for (u, _) in &stages[i].uses {
            if let Some(j) = stage_ref(u, i) {
                todo.push(j);
            }
        }
    }
    let mut out: BTreeMap<(String, String), Need> = BTreeMap::new();
    let mut add = |image: &str, used_by: String, platform: Option<String>| -> Result<()> {
        let (repository, reference) = normalize(image).ok_or_else(|| {
            Error::Usage(format!("{used_by}: {image:?} is not an image reference"))
        })?;
        out.entry((repository.clone(), reference.clone()))
            .or_insert(Need {
                repository,
                reference,
                used_by,
                platform,
            });
        Ok(())
    };
    if let Some(s) = &df.parser_directives.syntax {
        add(s.value.value, "# syntax (the frontend)".into(), None)?;
    }
    let mut order: Vec<usize> = wanted.into_iter().collect();
    order.sort();
    for i in order {
        let st = &stages[i];
        let label = match &st.name {
            Some(n) => format!("stage {n}"),
            None => format!("stage {i}"),
        };
        if let Base::Image(img) = &st.base {
            add(img, format!("FROM ({label})"), st.platform.clone())?;
        }
        for (u, how) in &st.uses {
            if stage_ref(u, i).is_none() {
                add(u, format!("{how} ({label})"), None)?;
            }
        }
    }
    Ok(out.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn substitution_as_buildkit_does_it() {
        let v = vars(&[("A", "x"), ("E", "")]);
        assert_eq!(substitute("$A-${A}", &v), "x-x");
        assert_eq!(substitute("${B:-def}", &v), "def");
        assert_eq!(substitute("${E:-def}", &v), "def");
        assert_eq!(substitute("${E-def}", &v), "");
        assert_eq!(substitute("${A:+alt}", &v), "alt");
        assert_eq!(substitute("${B:+alt}", &v), "");
        assert_eq!(substitute("img:${B:-${A}}", &v), "img:x");
        assert_eq!(substitute("\\$A", &v), "$A");
    }

    #[test]
    fn names_normalise_as_docker_does() {
        let n = |s: &str| normalize(s).map(|(a, b)| format!("{a} {b}"));
        assert_eq!(n("alpine").unwrap(), "docker.io/library/alpine latest");
        assert_eq!(n("alpine:3.19").unwrap(), "docker.io/library/alpine 3.19");
        assert_eq!(n("org/app:1").unwrap(), "docker.io/org/app 1");
        assert_eq!(n("ghcr.io/org/app:1").unwrap(), "ghcr.io/org/app 1");
        assert_eq!(
            n("index.docker.io/alpine").unwrap(),
            "docker.io/library/alpine latest"
        );
        assert_eq!(
            n("localhost:5000/app").unwrap(),
            "localhost:5000/app latest"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            n(&format!("alpine:3@{d}")).unwrap(),
            format!("docker.io/library/alpine {d}")
        );
        assert!(n("Alpine").is_none());
        assert!(n("").is_none());
    }

    fn needs_of(text: &str, args: &[(&str, &str)], target: Option<&str>) -> Vec<String> {
        let args: Vec<(String, String)> = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        needs(text, &args, target)
            .unwrap()
            .into_iter()
            .map(|n| format!("{} <- {}", n.reference_string(), n.used_by))
            .collect()
    }

    /// The table the issue asks for: each Dockerfile with the report it must give.
    #[test]
    fn dockerfiles_need_what_buildkit_would_pull() {
        let d = format!("sha256:{}", "b".repeat(64));
        type Case<'a> = (
            &'a str,
            String,
            Vec<(&'a str, &'a str)>,
            Option<&'a str>,
            Vec<String>,
        );
        let cases: Vec<Case> = vec![
            (
                "plain",
                "FROM alpine:3.19\nRUN echo hi\n".into(),
                vec![],
                None,
                vec!["docker.io/library/alpine:3.19 <- FROM (stage 0)".into()],
            ),
            (
                "ARG before FROM, default and --build-arg",
                "ARG BASE=alpine\nARG VER=3.18\nFROM ${BASE}:${VER}\nFROM busybox:${VER:-1}\nCOPY --from=0 / /\n".into(),
                vec![("VER", "3.19")],
                None,
                vec![
                    "docker.io/library/alpine:3.19 <- FROM (stage 0)".into(),
                    "docker.io/library/busybox:3.19 <- FROM (stage 1)".into(),
                ],
            ),
            (
                "an ARG inside a stage does not reach FROM",
                "FROM alpine AS a\nARG TAG=9\nFROM busybox:${TAG:-1}\nCOPY --from=a / /\n".into(),
                vec![],
                None,
                vec![
                    "docker.io/library/alpine:latest <- FROM (stage a)".into(),
                    "docker.io/library/busybox:1 <- FROM (stage 1)".into(),
                ],
            ),
            (
                "multi-stage, stage names are not images, --platform",
                "FROM --platform=$BUILDPLATFORM golang:1.22 AS build\nRUN go build\nFROM gcr.io/distroless/static\nCOPY --from=build /app /app\n".into(),
                vec![],
                None,
                vec![
                    "docker.io/library/golang:1.22 <- FROM (stage build)".into(),
                    "gcr.io/distroless/static:latest <- FROM (stage 1)".into(),
                ],
            ),
            (
                "COPY --from an image, RUN --mount from an image and from a stage index",
                "FROM alpine AS base\nFROM base\nCOPY --from=nginx:1.25 /etc/nginx /n\nRUN --mount=type=bind,from=ghcr.io/org/tools:2,target=/t --mount=type=cache,from=0,target=/c true\n".into(),
                vec![],
                None,
                vec![
                    "docker.io/library/alpine:latest <- FROM (stage base)".into(),
                    "docker.io/library/nginx:1.25 <- COPY --from (stage 1)".into(),
                    "ghcr.io/org/tools:2 <- RUN --mount (stage 1)".into(),
                ],
            ),
            (
                "# syntax= frontend, digests, scratch",
                format!("# syntax=docker/dockerfile:1.6\nFROM scratch\nCOPY --from=alpine@{d} / /\n"),
                vec![],
                None,
                vec![
                    "docker.io/docker/dockerfile:1.6 <- # syntax (the frontend)".into(),
                    format!("docker.io/library/alpine@{d} <- COPY --from (stage 0)"),
                ],
            ),
            (
                "--target builds only what it depends on",
                "FROM alpine AS a\nFROM busybox AS b\nCOPY --from=a / /\nFROM debian AS c\n".into(),
                vec![],
                Some("b"),
                vec![
                    "docker.io/library/alpine:latest <- FROM (stage a)".into(),
                    "docker.io/library/busybox:latest <- FROM (stage b)".into(),
                ],
            ),
            (
                "line continuations and lower-case instructions",
                "from \\\n  ghcr.io/org/base:1 \\\n  as x\n".into(),
                vec![],
                None,
                vec!["ghcr.io/org/base:1 <- FROM (stage x)".into()],
            ),
        ];
        for (what, text, args, target, want) in cases {
            assert_eq!(needs_of(&text, &args, target), want, "{what}:\n{text}");
        }
        assert!(needs("RUN x\n", &[], None).is_err(), "no FROM");
        assert!(
            needs("FROM a AS x\n", &[], Some("y")).is_err(),
            "no such target"
        );
    }
}
