//! Waiting for the server to have processed what a client sent. async-nats `flush` only
//! drains the socket buffer: a SUB followed by `flush` may still be unread when another
//! connection publishes. A message a client sends to its own inbox comes back only after
//! the server processed everything that client sent before it.

use std::time::Duration;

use async_nats::Client;
use futures::StreamExt;

/// How long the echo may take.
const ECHO: Duration = Duration::from_secs(5);

/// Returns once the server has processed everything `c` sent before this call.
pub async fn sync(c: &Client) {
    let inbox = c.new_inbox();
    let mut s = c.subscribe(inbox.clone()).await.unwrap();
    c.publish(inbox, bytes::Bytes::new()).await.unwrap();
    c.flush().await.unwrap();
    match tokio::time::timeout(ECHO, s.next()).await {
        Ok(Some(_)) => {}
        other => panic!("sync with the server failed: {other:?}"),
    }
    let _ = s.unsubscribe().await;
}
