//! `ferry debug …`: hidden commands for checks and experiments, not in `--help`.

use std::io::Write;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Go's compress/gzip, byte for byte.
    #[command(subcommand)]
    Gozip(Gozip),
    /// Layer patches, file to file (what `sync --have` does per layer).
    #[command(subcommand)]
    Patch(Patch),
}

#[derive(clap::Subcommand)]
pub enum Patch {
    /// Patch the gzip layer TARGET against the layer BASE (any compression), rebuild TARGET
    /// from it to check, and write the patch to OUT.
    Make {
        #[arg(long)]
        base: std::path::PathBuf,
        #[arg(long)]
        target: std::path::PathBuf,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Rebuild the layer PATCH describes from BASE into OUT (verified against the recipe).
    Apply {
        #[arg(long)]
        base: std::path::PathBuf,
        #[arg(long)]
        patch: std::path::PathBuf,
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

#[derive(clap::Subcommand)]
pub enum Gozip {
    /// Gzip stdin to stdout exactly as Go's gzip.NewWriterLevel + io.Copy + Close would.
    Encode {
        /// classic (Go ≤ 1.26) or 1.27.
        #[arg(long)]
        generation: ferry::gozip::Generation,
        /// -2 (Huffman only), -1 (default), 0 (stored) … 9.
        #[arg(long, allow_negative_numbers = true)]
        level: i32,
    },
    /// Print which Go gzip writer rebuilds FILE: `go-classic N`, `go-1.27 N` or `not-go`.
    Recognise {
        file: std::path::PathBuf,
        /// Also say why, when it is not Go's (on stderr).
        #[arg(long)]
        why: bool,
    },
}

fn digest_of(path: &std::path::Path) -> anyhow::Result<(ferry::digest::Digest, u64)> {
    use anyhow::Context;
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (h, n) =
        ferry::digest::hash_reader(std::io::BufReader::new(f), ferry::digest::Algorithm::Sha256)?;
    Ok((h.finish(), n))
}

fn tmp_beside(path: &std::path::Path) -> std::path::PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.to_owned())
        .unwrap_or_else(|| ".".into())
}

pub fn run(c: Command) -> anyhow::Result<i32> {
    use anyhow::Context;
    use ferry::patch::{self, BaseTar};
    match c {
        Command::Patch(Patch::Make { base, target, out }) => {
            let (bd, bsize) = digest_of(&base)?;
            let (td, _) = digest_of(&target)?;
            let tmp = tmp_beside(&out);
            let bt = BaseTar::spool(std::fs::File::open(&base)?, &tmp, u64::MAX)?;
            let tf = std::fs::File::open(&target)?;
            let (mut made, (g, l, _)) =
                patch::make_checked(&bd, bsize, &bt, &td, &tf, None, &tmp, 19)?;
            let mut o = std::fs::File::create(&out)?;
            std::io::copy(&mut made.file, &mut o)?;
            eprintln!(
                "{}: go-{g} level {l}; patch {} bytes ({} ops, {} bytes of frames) against {}",
                td, made.size, made.recipe.ops, made.recipe.data_bytes, bd
            );
            Ok(0)
        }
        Command::Patch(Patch::Apply {
            base,
            patch: p,
            out,
        }) => {
            let (bd, _) = digest_of(&base)?;
            let pf = std::fs::File::open(&p).with_context(|| format!("opening {}", p.display()))?;
            let (r, _) = patch::read_recipe(&pf)?;
            let tmp = tmp_beside(&out);
            let bt = BaseTar::spool_behind(
                std::fs::File::open(&base)?,
                &tmp,
                r.base_tar_size.saturating_add(1),
            )?;
            let o = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&out)?);
            patch::apply(&bt, &pf, &bd, (&r.target, r.target_size), o)?;
            eprintln!("{}: rebuilt, {} bytes", r.target, r.target_size);
            Ok(0)
        }
        Command::Gozip(Gozip::Encode { generation, level }) => {
            let stdout = std::io::stdout().lock();
            let out = std::io::BufWriter::with_capacity(1 << 16, stdout);
            ferry::gozip::encode(std::io::stdin().lock(), out, generation, level)?;
            Ok(0)
        }
        Command::Gozip(Gozip::Recognise { file, why }) => {
            let f = std::fs::File::open(&file)
                .with_context(|| format!("opening {}", file.display()))?;
            let r = ferry::gozip::recognise(&f)?;
            if let (true, ferry::gozip::Recognition::NotGo(reason)) = (why, &r) {
                eprintln!("{}: {reason}", file.display());
            }
            writeln!(std::io::stdout(), "{r}")?;
            Ok(0)
        }
    }
}
