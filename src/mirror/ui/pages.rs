//! The three pages as maud templates. Every number shown also sits in a `data-` attribute in
//! exact units (bytes, counts), which is what the browser tests compare with the API.

use std::time::SystemTime;

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::model::{Catalog, Child, Sharers, Summary, TagRow};
use super::{Ui, View, PAGE};
use crate::layout::Store;

pub struct Ctx<'a> {
    pub store: &'a Store,
    pub ui: &'a Ui,
    pub catalog: &'a Catalog,
    /// The address clients use (from `Host`), for the lines to copy.
    pub host: &'a str,
}

const STYLE: &str = r#"
:root{--fg:#1d2430;--mut:#5b6675;--line:#dde2e8;--acc:#1f6feb;--bar:#8fb8f5;--bg:#fff;--soft:#f5f7fa}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Noto Sans CJK SC",sans-serif;color:var(--fg);background:var(--bg)}
header{padding:12px 24px;border-bottom:1px solid var(--line);display:flex;gap:16px;align-items:baseline;flex-wrap:wrap}
header a.home{font-weight:700;font-size:18px;color:var(--fg);text-decoration:none}
header .where{color:var(--mut)}main{padding:16px 24px;max-width:1400px}
a{color:var(--acc);text-decoration:none}a:hover{text-decoration:underline}
h1{font-size:20px;margin:4px 0 12px}h2{font-size:16px;margin:20px 0 8px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:10px;margin-bottom:16px}
.card{border:1px solid var(--line);border-radius:6px;padding:8px 12px;background:var(--soft)}
.card{overflow-wrap:anywhere}.card .k{color:var(--mut);font-size:12px}.card .v{font-size:18px;font-weight:600}.card .s{color:var(--mut);font-size:12px}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600;color:var(--mut);white-space:nowrap}th a{color:inherit}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{height:6px;background:var(--bar);border-radius:3px;min-width:1px;margin-top:3px}
.mono,code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.muted{color:var(--mut)}.badge{display:inline-block;white-space:normal;padding:0 6px;border-radius:9px;background:#e8eef9;font-size:12px;}
.badge.cache{background:#e6f4ea}.badge.warn{background:#fdecea}
form.filter{margin:0 0 10px;display:flex;gap:6px}form.filter input{padding:4px 8px;border:1px solid var(--line);border-radius:4px;min-width:260px}
form.filter button{padding:4px 10px}
.pager{margin:10px 0;display:flex;gap:12px;color:var(--mut)}
pre.copy{background:var(--soft);border:1px solid var(--line);border-radius:6px;padding:8px 12px;overflow-x:auto;user-select:all}
ul.tree{list-style:none;padding-left:18px;margin:4px 0}ul.tree>li{margin:3px 0;border-left:2px solid var(--line);padding-left:8px}
.node .head{display:flex;gap:8px;flex-wrap:wrap;align-items:baseline}
"#;

fn layout(ctx: &Ctx, title: &str, body: Markup) -> String {
    let store = ctx.store;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                // No favicon request (it would be a 404 in the console).
                link rel="icon" href="data:,";
                title { (title) " · ferry" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    a.home href="/" { "ferry" }
                    span.where.mono { (store.describe()) }
                    @if store.read_only() { span.badge { "read-only" } }
                    span.muted { "registry API at " code { "/v2/" } }
                }
                main { (body) }
            }
        }
    }
    .into_string()
}

pub fn not_found() -> String {
    simple(
        "Not found",
        "No such page, repository or tag on this mirror.",
    )
}

pub fn failed(why: &str) -> String {
    simple("The store could not be read", why)
}

fn simple(title: &str, text: &str) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; link rel="icon" href="data:,"; title { (title) } style { (PreEscaped(STYLE)) } }
            body { main { h1 { (title) } p { (text) } p { a href="/" { "The mirror" } } } }
        }
    }
    .into_string()
}

/// 1536 → "1.5 KiB".
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn size(bytes: u64) -> Markup {
    html! { span title=(format!("{bytes} bytes")) data-bytes=(bytes) { (human(bytes)) } }
}

/// A UTC time as `2026-12-02 10:41`, or "never".
fn when_ms(ms: Option<u64>) -> Markup {
    let Some(ms) = ms else {
        return html! { span.muted { "—" } };
    };
    let text = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute()
            )
        })
        .unwrap_or_else(|_| "?".into());
    html! { span title="UTC" data-ms=(ms) { (text) } }
}

fn ms_of(t: Option<SystemTime>) -> Option<u64> {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
}

fn short(d: &crate::vocab::digest::Digest) -> String {
    let s = d.to_string();
    match s.split_once(':') {
        Some((alg, hex)) => format!("{alg}:{}", &hex[..hex.len().min(12)]),
        None => s,
    }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A link to the same view with some parameters changed.
fn link(base: &str, fixed: &[(&str, &str)], v: &View) -> String {
    let mut out = String::from(base);
    let mut sep = if base.contains('?') { '&' } else { '?' };
    let page = v.page.to_string();
    let mut push = |k: &str, val: &str| {
        if !val.is_empty() {
            out.push(sep);
            out.push_str(k);
            out.push('=');
            out.push_str(&enc(val));
            sep = '&';
        }
    };
    for (k, val) in fixed {
        push(k, val);
    }
    push("q", &v.q);
    push("sort", &v.sort);
    if v.desc {
        push("dir", "desc");
    }
    if v.page > 1 {
        push("page", &page);
    }
    out
}

/// A sortable column header: clicking sorts by it, clicking again reverses.
fn th_sort(
    base: &str,
    fixed: &[(&str, &str)],
    v: &View,
    key: &str,
    label: &str,
    num: bool,
) -> Markup {
    let active = v.sort == key;
    let next = View {
        sort: key.into(),
        desc: if active { !v.desc } else { num },
        page: 1,
        q: v.q.clone(),
    };
    let arrow = match (active, v.desc) {
        (true, true) => " ▼",
        (true, false) => " ▲",
        _ => "",
    };
    html! {
        th class=[num.then_some("n")] {
            a href=(link(base, fixed, &next)) data-sort=(key) { (label) (arrow) }
        }
    }
}

fn filter_form(base: &str, hidden: &[(&str, &str)], v: &View, what: &str) -> Markup {
    html! {
        form.filter method="get" action=(base) {
            @for (k, val) in hidden { input type="hidden" name=(k) value=(val); }
            input type="search" name="q" value=(v.q) placeholder=(format!("Filter {what} by name")) aria-label="filter";
            @if !v.sort.is_empty() { input type="hidden" name="sort" value=(v.sort); }
            @if v.desc { input type="hidden" name="dir" value="desc"; }
            button type="submit" { "Filter" }
            @if !v.q.is_empty() { a href=(link(base, hidden, &View { q: String::new(), page: 1, ..v.clone() })) { "clear" } }
        }
    }
}

fn pager(base: &str, fixed: &[(&str, &str)], v: &View, total: usize) -> Markup {
    let pages = total.div_ceil(PAGE).max(1);
    let page = v.page.min(pages);
    let at = |n: usize| {
        link(
            base,
            fixed,
            &View {
                page: n,
                ..v.clone()
            },
        )
    };
    html! {
        div.pager {
            @if page > 1 { a href=(at(page - 1)) rel="prev" { "← previous" } }
            span #pageinfo data-page=(page) data-pages=(pages) data-total=(total) {
                "page " (page) " of " (pages) " · " (total) " rows"
            }
            @if page < pages { a href=(at(page + 1)) rel="next" { "next →" } }
        }
    }
}

fn page_of<T>(rows: &[T], v: &View) -> std::ops::Range<usize> {
    let pages = rows.len().div_ceil(PAGE).max(1);
    let page = v.page.min(pages);
    let start = (page - 1) * PAGE;
    start..(start + PAGE).min(rows.len())
}

fn card(key: &str, id: &str, value: Markup, sub: Option<Markup>) -> Markup {
    html! {
        div.card #(id) {
            div.k { (key) }
            div.v { (value) }
            @if let Some(s) = sub { div.s { (s) } }
        }
    }
}

/// The mirror: what is on it, how much space each repository takes, and whether it is used.
/// `stored`: blobs on the store, their bytes, and when they were counted.
pub fn mirror(ctx: &Ctx, v: &View, stored: (usize, u64, std::time::Instant)) -> String {
    let c = ctx.catalog;
    let store = ctx.store;
    let (blob_count, stored, counted) = stored;
    let tags: usize = c.repos.iter().map(|r| r.tags).sum();
    let last_gc = store.wait(store.last_gc()).and_then(|(b, at)| {
        serde_json::from_slice::<crate::keep::gc::GcReport>(&b)
            .ok()
            .map(|r| (r, at))
    });
    let q = v.q.to_lowercase();
    let mut repos: Vec<&super::model::RepoRow> = c
        .repos
        .iter()
        .filter(|r| q.is_empty() || r.name.to_lowercase().contains(&q))
        .collect();
    match v.sort.as_str() {
        "tags" => repos.sort_by_key(|r| r.tags),
        "size" => repos.sort_by_key(|r| r.bytes),
        "unique" => repos.sort_by_key(|r| r.unique),
        "pushed" => repos.sort_by_key(|r| r.last_push_ms),
        "read" => repos.sort_by_key(|r| r.last_read),
        _ => {}
    }
    if v.desc {
        repos.reverse();
    }
    let max = c.repos.iter().map(|r| r.bytes).max().unwrap_or(0).max(1);
    let range = page_of(&repos, v);
    let body = html! {
        h1 { "The mirror" }
        div.cards {
            (card("Repositories", "total-repos", html! { span data-count=(c.repos.len()) { (c.repos.len()) } }, None))
            (card("Tags", "total-tags", html! { span data-count=(tags) { (tags) } },
                Some(html! { (c.rows.len()) " manifests recorded" })))
            (card("Referenced", "total-referenced", size(c.referenced_bytes),
                Some(html! { (c.distinct_blobs) " distinct blobs reached by tags" })))
            (card("Stored blobs", "total-blobs", html! { span data-count=(blob_count) { (blob_count) } },
                Some(html! { (size(stored)) " on the store, counted " (counted.elapsed().as_secs()) " s ago" })))
            @match store.disk_space() {
                Some((total, free)) => (card("Disk", "disk",
                    html! { (size(total.saturating_sub(free))) " used" },
                    Some(html! { (size(free)) " free of " (size(total)) }))),
                None => (card("Disk", "disk", html! { "object store" }, Some(html! { "space is the cluster's to tell" }))),
            }
            (card("Open uploads", "uploads", html! { span data-count=(store.open_uploads()) { (store.open_uploads()) } },
                Some(html! { "push sessions in this process" })))
            @match &last_gc {
                Some((r, at)) => (card("Last GC", "last-gc", when_ms(ms_of(Some(*at))),
                    Some(html! { "freed " (size(r.bytes_freed)) " (" (r.swept) " blobs)" }))),
                None => (card("Last GC", "last-gc", html! { span.muted { "none recorded" } }, None)),
            }
        }
        (filter_form("/", &[], v, "repositories"))
        table #repos {
            thead { tr {
                (th_sort("/", &[], v, "name", "Repository", false))
                (th_sort("/", &[], v, "tags", "Tags", true))
                (th_sort("/", &[], v, "size", "Size", true))
                (th_sort("/", &[], v, "unique", "Only here", true))
                (th_sort("/", &[], v, "pushed", "Last push", true))
                (th_sort("/", &[], v, "read", "Last read", true))
            } }
            tbody {
                @for r in &repos[range] {
                    tr data-repo=(r.name) data-tags=(r.tags) data-bytes=(r.bytes) data-unique=(r.unique) data-read=(ms_of(r.last_read).map(|m| m.to_string()).unwrap_or_default()) {
                        td { a href=(format!("/ui/repo?name={}", enc(&r.name))) { (r.name) } }
                        td.n { (r.tags) }
                        td.n {
                            (size(r.bytes))
                            div.bar style=(format!("width:{:.1}%", r.bytes as f64 * 100.0 / max as f64)) {}
                        }
                        td.n { (size(r.unique)) }
                        td.n { (when_ms(r.last_push_ms)) }
                        td.n { (when_ms(ms_of(r.last_read))) }
                    }
                }
                @if repos.is_empty() {
                    tr { td colspan="6" .muted { @if c.repos.is_empty() { "Nothing pushed yet." } @else { "No repository matches." } } }
                }
            }
        }
        (pager("/", &[], v, repos.len()))
        p.muted { "Size: every blob a repository reaches, counted once. Only here: what no other repository shares (what deleting the repository would return, after GC)." }
    };
    layout(ctx, "The mirror", body)
}

fn kind_badge(s: &Summary) -> Markup {
    let class = if s.kind.is_cache() {
        "badge cache"
    } else if s.kind == super::model::Kind::Unknown {
        "badge warn"
    } else {
        "badge"
    };
    html! { span class=(class) data-kind=(s.kind.label()) { (s.kind.label()) } }
}

fn copy_lines(ctx: &Ctx, row: &TagRow) -> Markup {
    let r = match &row.tag {
        Some(t) => format!("{}/{}:{t}", ctx.host, row.repo),
        None => format!("{}/{}@{}", ctx.host, row.repo, row.summary.digest),
    };
    let lines = if row.summary.kind.is_cache() {
        format!(
            "docker buildx build --cache-from type=registry,ref={r} .\nferry sync docker://{r} /media/usb/ferry"
        )
    } else {
        format!("docker pull {r}\nferry sync docker://{r} /media/usb/ferry")
    };
    html! { pre.copy.mono { (lines) } }
}

/// A repository: its tags, what each is, and the lines to copy.
pub fn repo(ctx: &Ctx, name: &str, v: &View) -> Option<String> {
    let c = ctx.catalog;
    let info = c.repos.iter().find(|r| r.name == name)?;
    let q = v.q.to_lowercase();
    let mut rows: Vec<(usize, &TagRow)> = c
        .rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.repo == name && !r.child)
        .filter(|(_, r)| {
            q.is_empty()
                || r.name().to_lowercase().contains(&q)
                || r.summary.kind.label().to_lowercase().contains(&q)
        })
        .collect();
    // Tags first (by name), then untagged entries.
    rows.sort_by(|(_, a), (_, b)| (a.tag.is_none(), &a.tag).cmp(&(b.tag.is_none(), &b.tag)));
    match v.sort.as_str() {
        "kind" => rows.sort_by_key(|(_, r)| r.summary.kind.label()),
        "size" => rows.sort_by_key(|(_, r)| r.summary.bytes()),
        "pushed" => rows.sort_by_key(|(_, r)| r.pushed_ms),
        "read" => rows.sort_by_key(|(_, r)| r.last_read),
        _ => {}
    }
    if v.desc {
        rows.reverse();
    }
    let example = c
        .rows
        .iter()
        .filter(|r| r.repo == name && r.tag.is_some())
        .min_by_key(|r| (r.tag.as_deref() != Some("latest"), r.tag.clone()));
    let fixed = [("name", name)];
    let range = page_of(&rows, v);
    let body = html! {
        h1 { "Repository " span.mono #repo-name { (name) } }
        div.cards {
            (card("Tags", "repo-tags", html! { span data-count=(info.tags) { (info.tags) } }, Some(html! { (info.entries) " manifests recorded (children of indexes included)" })))
            (card("Size", "repo-bytes", size(info.bytes), Some(html! { "every blob once" })))
            (card("Only here", "repo-unique", size(info.unique), Some(html! { "no other repository shares it" })))
            (card("Last push", "repo-pushed", when_ms(info.last_push_ms), None))
            (card("Last read", "repo-read", when_ms(ms_of(info.last_read)), None))
        }
        @if let Some(row) = example {
            h2 { "To use it" }
            (copy_lines(ctx, row))
        }
        (filter_form("/ui/repo", &fixed, v, "tags"))
        table #tags {
            thead { tr {
                (th_sort("/ui/repo", &fixed, v, "name", "Tag", false))
                (th_sort("/ui/repo", &fixed, v, "kind", "Kind", false))
                th { "Platforms" }
                (th_sort("/ui/repo", &fixed, v, "size", "Size", true))
                (th_sort("/ui/repo", &fixed, v, "pushed", "Pushed", true))
                (th_sort("/ui/repo", &fixed, v, "read", "Last read", true))
                th { "Digest" }
            } }
            tbody {
                @for (_, r) in &rows[range] {
                    @let href = match &r.tag {
                        Some(t) => format!("/ui/tag?repo={}&tag={}", enc(name), enc(t)),
                        None => format!("/ui/tag?repo={}&digest={}", enc(name), enc(&r.summary.digest.to_string())),
                    };
                    tr data-tag=(r.tag.clone().unwrap_or_default()) data-digest=(r.summary.digest.to_string()) data-bytes=(r.summary.bytes()) {
                        td { a href=(href) { @match &r.tag { Some(t) => (t), None => span.muted { "untagged" } } } }
                        td { (kind_badge(&r.summary)) }
                        td.mono { (ctx.ui.summaries.platforms(ctx.store, &r.summary).join(", ")) }
                        td.n { (size(r.summary.bytes())) }
                        td.n { (when_ms(r.pushed_ms)) }
                        td.n { (when_ms(ms_of(r.last_read))) }
                        td.mono title=(r.summary.digest.to_string()) { (short(&r.summary.digest)) }
                    }
                }
                @if rows.is_empty() { tr { td colspan="7" .muted { "No tag matches." } } }
            }
        }
        (pager("/ui/repo", &fixed, v, rows.len()))
    };
    Some(layout(ctx, name, body))
}

fn shared_note(ctx: &Ctx, sharers: &Sharers, d: &crate::vocab::digest::Digest) -> Markup {
    let others = sharers.of(d);
    if others.is_empty() {
        return html! { span.badge data-shared="0" title="no other tag reaches this blob: deleting this tag frees it" { "only this tag" } };
    }
    let names: Vec<String> = others
        .iter()
        .take(3)
        .filter_map(|&i| ctx.catalog.rows.get(i).map(TagRow::name))
        .collect();
    let more = others.len().saturating_sub(names.len());
    html! {
        span.muted data-shared=(others.len()) {
            "shared with " (others.len()) " other " (if others.len() == 1 { "tag" } else { "tags" }) ": "
            (names.join(", "))
            @if more > 0 { " and " (more) " more" }
        }
    }
}

fn node(ctx: &Ctx, sharers: &Sharers, c: &Child, depth: usize) -> Markup {
    let stored = ctx
        .store
        .wait(ctx.store.blob_size(&c.digest))
        .ok()
        .flatten()
        .is_some();
    html! {
        li.node data-digest=(c.digest.to_string()) data-size=(c.size) data-role=(c.role.label()) {
            div.head {
                span.badge { (c.role.label()) }
                @if let Some(s) = &c.summary { (kind_badge(s)) }
                @if let Some(p) = &c.platform { span.mono { (p) } }
                span.mono title=(c.digest.to_string()) { (short(&c.digest)) }
                (size(c.size))
                span.mono.muted { (c.media_type) }
                @if !stored { span.badge.warn { "not in this store" } }
                (shared_note(ctx, sharers, &c.digest))
            }
            @if let Some(s) = &c.summary {
                @if depth < 4 && !s.children.is_empty() {
                    ul.tree { @for ch in &s.children { (node(ctx, sharers, ch, depth + 1)) } }
                }
            }
        }
    }
}

/// What refers to a manifest in its repository (signatures, SBOMs, attestations), each with
/// whether this store holds it.
fn referrers(ctx: &Ctx, repo: &str, subject: &crate::vocab::digest::Digest) -> Markup {
    let list: Vec<(String, String, crate::vocab::digest::Digest, bool)> = ctx
        .store
        .wait(ctx.store.index())
        .map(|idx| {
            idx.referrers(repo, subject)
                .into_iter()
                .map(|d| {
                    let at = d.artifact_type.clone().unwrap_or_default();
                    let kind = crate::vocab::media::ReferrerKind::of(&at).name().to_owned();
                    let here = ctx
                        .store
                        .wait(ctx.store.blob_size(&d.digest))
                        .ok()
                        .flatten()
                        .is_some();
                    (kind, at, d.digest.clone(), here)
                })
                .collect()
        })
        .unwrap_or_default();
    html! {
        @if list.is_empty() {
            p.muted #referrers data-count="0" { "None: no signature, SBOM or attestation in this repository refers to it." }
        } @else {
            table #referrers data-count=(list.len()) {
                thead { tr { th { "Kind" } th { "Artifact type" } th { "Digest" } th { "Here" } } }
                tbody {
                    @for (kind, at, d, here) in &list {
                        tr data-digest=(d.to_string()) data-kind=(kind) {
                            td { span.badge { (kind) } }
                            td.mono { (at) }
                            td.mono title=(d.to_string()) {
                                a href=(format!("/ui/tag?repo={}&digest={}", enc(repo), enc(&d.to_string()))) { (short(d)) }
                            }
                            td { @if *here { "present" } @else { span.badge.warn { "missing" } } }
                        }
                    }
                }
            }
        }
    }
}

/// For an image index carried for some of its platforms only (`ferry sync --platform`):
/// "2 of 4 platforms carried; not here: linux/arm64/v8, …".
fn carried_note(ctx: &Ctx, s: &Summary) -> Option<Markup> {
    let with_platform: Vec<&Child> = s
        .children
        .iter()
        .filter(|c| {
            c.platform
                .as_deref()
                .is_some_and(|p| !p.starts_with("unknown/"))
        })
        .collect();
    let absent: Vec<&str> = with_platform
        .iter()
        .filter(|c| {
            ctx.store
                .wait(ctx.store.blob_size(&c.digest))
                .ok()
                .flatten()
                .is_none()
        })
        .filter_map(|c| c.platform.as_deref())
        .collect();
    if absent.is_empty() {
        return None;
    }
    let n = with_platform.len();
    Some(html! {
        span #tag-carried data-carried=(n - absent.len()) data-of=(n) {
            (n - absent.len()) " of " (n) " platforms carried; not here: " (absent.join(", "))
        }
    })
}

/// A tag: its graph, and which other tags share each blob.
pub fn tag(ctx: &Ctx, repo: &str, tag: Option<&str>, digest: Option<&str>) -> Option<String> {
    let c = ctx.catalog;
    let (i, row) = c.rows.iter().enumerate().find(|(_, r)| {
        r.repo == repo
            && match (tag, digest) {
                (Some(t), _) => r.tag.as_deref() == Some(t),
                (None, Some(d)) => r.tag.is_none() && r.summary.digest.to_string() == d,
                (None, None) => false,
            }
    })?;
    let s = &row.summary;
    let platforms = ctx.ui.summaries.platforms(ctx.store, s);
    let sharers = c.sharers(i);
    let frees = sharers.frees(s);
    let body = html! {
        h1 { a href=(format!("/ui/repo?name={}", enc(repo))) { (repo) } span.mono { @match &row.tag { Some(t) => { ":" (t) }, None => { "@" (short(&s.digest)) } } } }
        div.cards {
            (card("Kind", "tag-kind", kind_badge(s), Some(html! { span.mono { (s.media_type) } })))
            (card("Size", "tag-bytes", size(s.bytes()), Some(html! { (s.closure.len()) " blobs, each once" })))
            (card("Deleting it frees", "tag-frees", size(frees), Some(html! { "blobs no other tag reaches (after GC)" })))
            (card("Platforms", "tag-platforms", html! { span.mono { @if platforms.is_empty() { "—" } @else { (platforms.join(", ")) } } },
                carried_note(ctx, s)))
            (card("Pushed", "tag-pushed", when_ms(row.pushed_ms), None))
            (card("Last read", "tag-read", when_ms(ms_of(row.last_read)), None))
        }
        p { "Digest " code #tag-digest { (s.digest.to_string()) } }
        @if let Some(subject) = &s.subject { p { "Refers to " code { (subject.to_string()) } } }
        h2 { "Referrers" }
        (referrers(ctx, repo, &s.digest))
        h2 { "To use it" }
        (copy_lines(ctx, row))
        h2 { "Graph" }
        ul.tree #graph {
            li.node.root data-digest=(s.digest.to_string()) data-size=(s.size) data-role="root" {
                div.head {
                    (kind_badge(s))
                    span.mono title=(s.digest.to_string()) { (short(&s.digest)) }
                    (size(s.size))
                    span.mono.muted { (s.media_type) }
                    (shared_note(ctx, &sharers, &s.digest))
                }
                @if !s.children.is_empty() {
                    ul.tree { @for ch in &s.children { (node(ctx, &sharers, ch, 1)) } }
                }
            }
        }
    };
    let title = row.name();
    Some(layout(ctx, &title, body))
}
