//! RPC answered in Rust: `add` sums two numbers, `whoami` answers the caller's identity, and
//! any other method is error 104 "method not found". The node is served on its own.
//!
//! Run: `cargo run -p switchboard --example rpc` (ADDR=127.0.0.1:8000 by default), then call
//! `centrifuge.rpc("add", {"a": 1, "b": 2})` from a connected client.

use serde::{Deserialize, Serialize};
use switchboard::{Data, ErrorCode, Node, RpcReply};

#[derive(Deserialize)]
struct AddArgs {
    a: f64,
    b: f64,
}

#[derive(Serialize)]
struct Sum {
    sum: f64,
}

/// The RPC node.
pub(crate) async fn node() -> anyhow::Result<Node> {
    Node::builder()
        .on_rpc(|ctx, req| async move {
            match req.method.as_str() {
                "add" => {
                    let args: AddArgs = req.data.ok_or(ErrorCode::BAD_REQUEST)?.decode()?;
                    Ok(RpcReply::data(Data::json(&Sum {
                        sum: args.a + args.b,
                    })?))
                }
                "whoami" => {
                    let me = serde_json::json!({"client": ctx.client_id(), "user": ctx.user()});
                    Ok(RpcReply::data(Data::json(&me)?))
                }
                _ => Err(ErrorCode::METHOD_NOT_FOUND.into()),
            }
        })
        .build()
        .await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:8000".into());
    let server = node().await?.start(addr.parse()?).await?;
    println!("listening on http://{}", server.addr());
    server.run_until(switchboard::shutdown_signal()).await;
    Ok(())
}
