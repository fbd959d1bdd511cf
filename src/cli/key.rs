//! `ferry key generate`: a minisign key pair for signed trips.

use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write ferry.key (secret, password-protected) and ferry.pub into DIR. The password comes
    /// from FERRY_KEY_PASSWORD, else a prompt on the terminal. minisign reads both files.
    Generate {
        /// The directory to write the key pair into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Leave the secret key unencrypted (automation; keep the file safe another way).
        #[arg(long)]
        no_password: bool,
    },
}

/// The password for a secret key: FERRY_KEY_PASSWORD, else asked on the terminal (the prompt
/// and the typing go to /dev/tty, never to standard output, which `--json` keeps for itself).
fn password_for(what: &str, twice: bool) -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("FERRY_KEY_PASSWORD") {
        return Ok(p);
    }
    let p = rpassword::prompt_password(format!("Password for {what}: ")).map_err(|e| {
        super::usage(format!(
            "{what} needs a password: set FERRY_KEY_PASSWORD or run on a terminal ({e})"
        ))
    })?;
    if twice && rpassword::prompt_password("The same password again: ")? != p {
        return Err(super::usage("the passwords differ".into()));
    }
    Ok(p)
}

pub fn run(c: Command) -> anyhow::Result<i32> {
    match c {
        Command::Generate { out, no_password } => {
            let password = if no_password {
                None
            } else {
                Some(password_for("the new key", true)?)
            };
            let (sk, pk) = ferry::trip::generate(&out, !no_password, password)?;
            let v = ferry::trip::Verifier::load(&pk)?;
            println!("key {}", v.key_id);
            println!(
                "secret key: {} (keep it on the connected side)",
                sk.display()
            );
            println!("public key: {} (copy it to the offline side)", pk.display());
            Ok(0)
        }
    }
}

/// `--sign KEY`: a password is asked for only when the key is encrypted.
pub fn signer(path: &std::path::Path) -> anyhow::Result<std::sync::Arc<ferry::trip::Signer>> {
    let password = if ferry::trip::Signer::needs_password(path)? {
        Some(password_for(&path.display().to_string(), false)?)
    } else {
        None
    };
    Ok(std::sync::Arc::new(ferry::trip::Signer::load(
        path, password,
    )?))
}

/// `--verify-key PUB`.
pub fn verifier(path: &std::path::Path) -> anyhow::Result<std::sync::Arc<ferry::trip::Verifier>> {
    Ok(std::sync::Arc::new(ferry::trip::Verifier::load(path)?))
}
