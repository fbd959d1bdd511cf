//! `ferry debug …`: hidden commands for checks and experiments, not in `--help`.

use std::io::Write;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Go's compress/gzip, byte for byte.
    #[command(subcommand)]
    Gozip(Gozip),
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

pub fn run(c: Command) -> anyhow::Result<i32> {
    use anyhow::Context;
    match c {
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
