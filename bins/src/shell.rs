//! The node's interactive shell: a person at a node works at its prompt.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use p2p_core::limits::REPLICAS_DEFAULT;
use p2p_net::client::Client;
use p2p_net::transport::TcpDialer;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::daemon::RunningNode;
use crate::output;

pub const HELP: &str = "\
commands:
  put PATH [REPLICAS]   store a local file (default 3 replicas)
  get NAME [OUT]        fetch a file (default: ./NAME)
  ls                    list files
  rm NAME               remove a file (its chunks are deleted from the nodes)
  status                nodes, durability, repairs, files at risk
  leave [--force]       hand this node's chunks over, then stop it
                        (--force: leave even if they cannot all move)
  help                  this text
  quit                  stop reading commands (the node keeps serving)";

/// What the shell decided.
pub enum ShellEnd {
    /// Standard input closed or `quit`: keep serving.
    Detached,
    /// The node left the network.
    Left,
}

/// Read commands from standard input until it closes, `quit` or `leave`.
pub async fn run(node: &RunningNode, client: &Client<TcpDialer>) -> ShellEnd {
    let interactive = std::io::stdin().is_terminal();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        if interactive {
            print!("p2p> ");
            let _ = std::io::stdout().flush();
        }
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) | Err(_) => return ShellEnd::Detached,
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&cmd, args)) = words.split_first() else {
            continue;
        };
        match run_command(node, client, cmd, args).await {
            Ok(Some(end)) => return end,
            Ok(None) => {}
            Err(e) => println!("error: {e:#}"),
        }
        let _ = std::io::stdout().flush();
    }
}

async fn run_command(
    node: &RunningNode,
    client: &Client<TcpDialer>,
    cmd: &str,
    args: &[&str],
) -> anyhow::Result<Option<ShellEnd>> {
    match (cmd, args) {
        ("put", [path]) | ("put", [path, _]) => {
            let replicas = match args.get(1) {
                Some(r) => r
                    .parse()
                    .map_err(|_| anyhow::anyhow!("REPLICAS must be a number, got {r:?}"))?,
                None => REPLICAS_DEFAULT,
            };
            let bar = output::Bar::new("put");
            let r = client
                .put_file(Path::new(path), None, replicas, false, &bar)
                .await?;
            println!("{}", output::put_text(&r));
        }
        ("get", [name]) | ("get", [name, _]) => {
            let out = args
                .get(1)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(name));
            let bar = output::Bar::new("get");
            let r = client.get_file(name, &out, &bar).await?;
            println!("{}", output::get_text(&r, &out));
        }
        ("ls", []) => println!("{}", output::ls_text(&client.list().await?)),
        ("status", []) => {
            println!(
                "this node: {} at {} ({} chunks)",
                node.service.id(),
                node.service.addr(),
                node.service.chunk_count()
            );
            println!("{}", output::status_text(&client.status().await?));
        }
        ("rm", [name]) => {
            client.remove(name).await?;
            println!("removed {name}");
        }
        ("leave", []) | ("leave", ["--force"]) => {
            let progress = |done: u64, total: u64| {
                if total > 0 {
                    println!("handed over {done}/{total} chunks");
                }
            };
            node.service.leave(!args.is_empty(), &progress).await?;
            println!("left the network; every chunk this node held has its copies elsewhere");
            return Ok(Some(ShellEnd::Left));
        }
        ("help", _) => println!("{HELP}"),
        ("quit", []) | ("exit", []) => return Ok(Some(ShellEnd::Detached)),
        _ => println!(
            "unknown command or arguments: {cmd} {}\n{HELP}",
            args.join(" ")
        ),
    }
    Ok(None)
}
