//! `ztrace generate man|completions SHELL`: the man page and shell completions, made from the
//! same clap definitions the binary parses with, so they cannot drift from the real flags.
//! `cargo xtask package` runs it to fill the .deb.

use std::io::Write;

#[derive(clap::Subcommand, Debug, Clone)]
pub enum What {
    /// The man page (roff) on stdout.
    Man,
    /// Completions for SHELL (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Writes `what` for the command line `cmd` (the cli module hands its own definition over).
pub fn run(what: &What, mut cmd: clap::Command) -> i32 {
    let mut out = Vec::new();
    let result = match what {
        What::Man => clap_mangen::Man::new(cmd).render(&mut out),
        What::Completions { shell } => {
            clap_complete::generate(*shell, &mut cmd, "ztrace", &mut out);
            Ok(())
        }
    };
    match result.and_then(|()| std::io::stdout().write_all(&out)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ztrace: writing the output: {e}");
            1
        }
    }
}
