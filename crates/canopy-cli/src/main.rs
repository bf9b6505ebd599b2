//! `canopy`: the companion CLI for Canopy (and any NATS server).
//!
//! This module owns the command-line surface (clap derive) and dispatch; each command
//! family lives in its own module: [`msg`] (pub/sub/req/reply), [`bench`] (load
//! generation), [`server`] ($SYS monitoring requests), JetStream: [`stream`], [`consumer`],
//! [`kv`], [`object`] and `account info` (shared plumbing in [`js`]); deployment checks in
//! [`topology`]. Connection flags are in [`conn`].

mod bench;
mod conn;
mod consumer;
mod js;
mod kv;
mod msg;
mod object;
mod procstat;
mod server;
mod stream;
mod topology;
mod util;

use clap::{Parser, Subcommand};

/// Command line of the `canopy` binary.
#[derive(Parser, Debug)]
#[command(
    name = "canopy",
    version,
    about = "Canopy companion CLI: pub, sub, req, reply, bench, server, stream, consumer, kv, object, account, topology"
)]
struct Cli {
    #[command(flatten)]
    conn: conn::ConnArgs,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Publish a message (BODY, or stdin when BODY is omitted).
    Pub(msg::PubArgs),
    /// Subscribe and print received messages.
    Sub(msg::SubArgs),
    /// Send a request and print the reply.
    Req(msg::ReqArgs),
    /// Answer requests on SUBJECT with a fixed BODY.
    Reply(msg::ReplyArgs),
    /// Measure throughput, fan-out, request latency or idle-connection memory.
    Bench(bench::BenchArgs),
    /// Query servers through the system account ($SYS.REQ.SERVER.PING...).
    Server {
        #[command(subcommand)]
        cmd: server::ServerCmd,
    },
    /// JetStream streams: add, info, ls, rm, purge, get.
    #[command(alias = "str")]
    Stream {
        #[command(flatten)]
        js: js::JsOpts,
        #[command(subcommand)]
        cmd: stream::StreamCmd,
    },
    /// JetStream consumers: add, info, ls, rm, next.
    #[command(alias = "con")]
    Consumer {
        #[command(flatten)]
        js: js::JsOpts,
        #[command(subcommand)]
        cmd: consumer::ConsumerCmd,
    },
    /// Key-Value buckets: add, put, get, del, rm, ls, history, watch.
    Kv {
        #[command(flatten)]
        js: js::JsOpts,
        #[command(subcommand)]
        cmd: kv::KvCmd,
    },
    /// Object Store buckets: add, put, get, ls, rm, info.
    #[command(alias = "obj")]
    Object {
        #[command(flatten)]
        js: js::JsOpts,
        #[command(subcommand)]
        cmd: object::ObjectCmd,
    },
    /// Check or draw a whole deployment from its server configs (no server needed).
    Topology {
        #[command(subcommand)]
        cmd: topology::TopologyCmd,
    },
    /// JetStream account information.
    Account {
        #[command(flatten)]
        js: js::JsOpts,
        #[command(subcommand)]
        cmd: AccountCmd,
    },
}

#[derive(Subcommand, Debug)]
enum AccountCmd {
    /// The account's JetStream usage and limits ($JS.API.INFO).
    Info,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("canopy: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.cmd {
            Command::Pub(a) => msg::publish(&cli.conn, a).await,
            Command::Sub(a) => msg::subscribe(&cli.conn, a).await,
            Command::Req(a) => msg::request(&cli.conn, a).await,
            Command::Reply(a) => msg::reply(&cli.conn, a).await,
            Command::Bench(a) => bench::run(&cli.conn, a).await,
            Command::Server { cmd } => server::run(&cli.conn, cmd).await,
            Command::Stream { js, cmd } => stream::run(&cli.conn, &js, cmd).await,
            Command::Consumer { js, cmd } => consumer::run(&cli.conn, &js, cmd).await,
            Command::Kv { js, cmd } => kv::run(&cli.conn, &js, cmd).await,
            Command::Object { js, cmd } => object::run(&cli.conn, &js, cmd).await,
            Command::Topology { cmd } => topology::run(cmd),
            Command::Account {
                js,
                cmd: AccountCmd::Info,
            } => js::account_info(&cli.conn, &js).await,
        }
    });
    // Do not wait for lingering connection tasks (e.g. idle bench sockets).
    rt.shutdown_background();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("canopy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
