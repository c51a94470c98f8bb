//! The completions and man pages `cargo xtask dist` ships, generated for real and read back:
//! every long flag of each binary appears in each shell's script and in its man page.

use std::path::{Path, PathBuf};

use xtask::cli_docs;

fn fresh_out_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("removing the previous output");
    }
    dir
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The long flags of a command, as typed (`--drain-timeout`).
fn long_flags(command: &clap::Command) -> Vec<String> {
    command
        .get_arguments()
        .filter(|arg| !arg.is_hide_set())
        .filter_map(|arg| arg.get_long())
        .map(|long| format!("--{long}"))
        .collect()
}

#[test]
fn completions_and_man_pages_name_every_flag_of_each_binary() {
    let out = fresh_out_dir("cli-docs");
    let written = cli_docs::write_all(&out).expect("generation succeeds");

    let expected_files = [
        "completions/bash/notify-gateway.bash",
        "completions/zsh/_notify-gateway",
        "completions/fish/notify-gateway.fish",
        "man/man1/notify-gateway.1",
        "completions/bash/notify-publish.bash",
        "completions/zsh/_notify-publish",
        "completions/fish/notify-publish.fish",
        "man/man1/notify-publish.1",
    ];
    for file in expected_files {
        assert!(
            written.contains(&out.join(file)),
            "{file} not among the written files: {written:?}"
        );
    }

    // Flags that exist today, so an empty or wrong command cannot pass the loop below.
    let known = [
        (
            "notify-gateway",
            ["--redis-url", "--drain-timeout", "--listen"],
        ),
        (
            "notify-publish",
            ["--region", "--video-id", "--gateway-url"],
        ),
    ];
    for command in cli_docs::shipped_commands() {
        let name = command.get_name().to_owned();
        let flags = long_flags(&command);
        let known_flags = known
            .iter()
            .find(|(bin, _)| *bin == name)
            .unwrap_or_else(|| panic!("{name} is not a shipped binary"))
            .1;
        for flag in known_flags {
            assert!(flags.iter().any(|f| f == flag), "{name} lost {flag}");
        }

        let bash = read(&out.join(format!("completions/bash/{name}.bash")));
        let zsh = read(&out.join(format!("completions/zsh/_{name}")));
        let fish = read(&out.join(format!("completions/fish/{name}.fish")));
        let man = read(&out.join(format!("man/man1/{name}.1")));
        assert!(
            man.contains(&format!(".TH {name} 1")),
            "{name}.1 has no roff title line"
        );
        assert!(
            zsh.starts_with(&format!("#compdef {name}")),
            "_{name} is no zsh completion"
        );
        assert!(
            bash.contains(&format!("-o default {name}\n")),
            "{name}.bash registers no completion for {name}"
        );
        for flag in &flags {
            assert!(
                bash.contains(flag.as_str()),
                "bash completion of {name} lacks {flag}"
            );
            assert!(
                zsh.contains(flag.as_str()),
                "zsh completion of {name} lacks {flag}"
            );
            let fish_long = format!("-l {}", flag.trim_start_matches("--"));
            assert!(
                fish.contains(&fish_long),
                "fish completion of {name} lacks {fish_long}"
            );
            // roff escapes `-` as `\-`.
            let escaped = flag.replace('-', "\\-");
            assert!(man.contains(&escaped), "man page of {name} lacks {escaped}");
        }
    }
}
