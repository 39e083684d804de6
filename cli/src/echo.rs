//! The `echo` service type: a TCP echo server built into pop, so a demo needs nothing else.

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

pub async fn serve(host: &str, port: u16) -> Result<()> {
    let listener = TcpListener::bind((host, port))
        .await
        .with_context(|| format!("binding {host}:{port}"))?;
    let addr = listener.local_addr()?;
    println!("echo server listening on {addr}");
    loop {
        let (mut socket, peer) = listener.accept().await?;
        tokio::spawn(async move {
            let (mut reader, mut writer) = socket.split();
            if let Err(e) = tokio::io::copy(&mut reader, &mut writer).await {
                eprintln!("echo: {peer}: {e}");
            }
            let _ = writer.shutdown().await;
        });
    }
}
