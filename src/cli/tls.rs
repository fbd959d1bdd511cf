//! `ferry tls init`.

use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create a small CA and a server certificate for the mirror's names, and print where each
    /// client must put the CA.
    ///
    /// Writes ca.crt, server.crt and server.key (the key with mode 0600) to --out. The CA's key is not kept:
    /// the CA can vouch for this one certificate only. To change names, run again with --force and
    /// hand out the new ca.crt.
    Init {
        /// A name or IP address clients use to reach the mirror; repeat for each.
        #[arg(long = "host", value_name = "NAME|IP", required = true)]
        hosts: Vec<String>,
        /// Directory to write the files to.
        #[arg(long, default_value = "./tls")]
        out: PathBuf,
        /// The port the mirror will listen on (for the printed instructions).
        #[arg(long, default_value_t = 5000)]
        port: u16,
        /// Days the certificates stay valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(c: Command) -> anyhow::Result<i32> {
    match c {
        Command::Init {
            hosts,
            out,
            port,
            days,
            force,
        } => {
            let issued = ferry::tls::init(&hosts, &out, days, force)?;
            print!("{}", ferry::tls::instructions(&issued, port));
        }
    }
    Ok(0)
}
