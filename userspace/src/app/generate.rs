//! `ztrace generate man|completions SHELL`: the man page and shell completions, made from the
//! same clap definitions the binary parses with, so they cannot drift from the real flags.
//! `cargo xtask package` runs it to fill the .deb.

use std::io::Write;

use clap::CommandFactory;

use super::cli::Cli;

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

pub fn run(what: &What) -> i32 {
    let mut cmd = Cli::command();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_page_and_completions_name_the_real_flags() {
        let mut man = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut man)
            .unwrap();
        let man = String::from_utf8(man).unwrap();
        assert!(man.starts_with(".ie"), "{}", &man[..40]);
        for flag in ["otlp\\-endpoint", "exe", "pid"] {
            assert!(man.contains(flag), "the man page lacks --{flag}");
        }
        let mut bash = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "ztrace",
            &mut bash,
        );
        let bash = String::from_utf8(bash).unwrap();
        assert!(bash.contains("--otlp-endpoint") && bash.contains("--exe"));
    }
}
